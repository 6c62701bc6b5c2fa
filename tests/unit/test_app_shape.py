"""The node's aiohttp application: what every request pays for."""

from __future__ import annotations

from node.app import POOLS, build_app
from node.config import Settings
from node.schema import build
from node.upstream.fastclient import FastClient
from node.upstream.pool import AiohttpClient


def test_no_middleware_anywhere_so_routes_pay_for_no_guard() -> None:
    """The admin and dashboard guards wrap their own handlers: one middleware in any sub-app
    would make aiohttp run its middleware machinery on every request of the node."""
    settings = build(
        Settings,
        {
            "node": {"admin_token": "s3cret"},
            "routes": [
                {
                    "path": "/hello",
                    "target": "handler:node.demo:hello",
                    "ratelimit": {
                        "limit": 5,
                        "window": 1,
                        "key": "header:X-API-Key",
                        "tiers": {"pro": {"limit": 50, "window": 1}},
                    },
                }
            ],
        },
        "",
    )
    app = build_app(settings, "all")
    subapps = [
        info["app"] for info in (r.get_info() for r in app.router.resources()) if "app" in info
    ]
    assert len(subapps) == 2  # /admin and /dashboard
    assert not app.middlewares
    assert not any(sub.middlewares for sub in subapps)


def test_each_pool_gets_the_client_its_members_need() -> None:
    """Plain http members get the lean client; https or credentials in the URL, aiohttp's."""
    upstreams = {
        "plain": {"targets": ["http://127.0.0.1:9001"]},
        "tls": {"targets": ["http://127.0.0.1:9001", "https://127.0.0.1:9443"]},
        "creds": {"targets": ["http://user:pw@127.0.0.1:9001"]},
    }
    app = build_app(build(Settings, {"upstreams": upstreams}, ""), "all")
    kinds = {name: type(pool.client) for name, pool in app[POOLS].items()}
    assert kinds == {"plain": FastClient, "tls": AiohttpClient, "creds": AiohttpClient}
