"""Handlers for the e2e tests, imported by node subprocesses through PYTHONPATH."""

from __future__ import annotations

import asyncio
from typing import Any

from node.call import Reply


async def slow(call: Any) -> dict[str, Any]:
    """GET /slow?seconds=S: answers after sleeping S seconds (default 1)."""
    seconds = float(call.query.get("seconds", "1"))
    await asyncio.sleep(seconds)
    return {"slept": seconds}


async def flaky(call: Any) -> Any:
    """GET /flaky?status=S: answers status S (default 200): an upstream failing on demand."""
    return Reply.json({"flaky": True}, int(call.query.get("status", "200")))
