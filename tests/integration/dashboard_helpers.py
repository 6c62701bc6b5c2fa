"""A node app with the dashboard, served on a free port, for the dashboard's integration tests."""

from __future__ import annotations

from typing import Any

from node.config import Settings
from node.schema import build


def dashboard_settings(
    *, interval: float = 1.0, token: str = "", routes: int = 1, **node: Any
) -> Settings:
    """Settings of a node with `routes` rate-limited handler routes (more routes, bigger frames)."""
    data: dict[str, Any] = {
        "node": {"name": "dash-a", "admin_token": token, **node},
        "dashboard": {"interval": interval},
        "routes": [
            {
                "path": f"/hello{i}",
                "methods": ["GET"],
                "target": "handler:node.demo:hello",
                "ratelimit": {"limit": 1000, "window": 60},
            }
            for i in range(routes)
        ],
    }
    return build(Settings, data, "")
