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


def note(line: str) -> None:
    import os

    with open(os.environ["JOB_LOG"], "a") as f:  # a line, appended: no need to await it
        f.write(line + "\n")


async def job(call: Any) -> dict[str, Any]:
    """A queued job: notes `start <pid>` and `end <pid>` in the file $JOB_LOG around a sleep
    of `?seconds=` (default 1), so a test sees which worker ran it and whether it ended."""
    import os

    seconds = float(call.query.get("seconds", "1"))
    note(f"start {os.getpid()} {call.request_id}")
    await asyncio.sleep(seconds)
    note(f"end {os.getpid()} {call.request_id}")
    return {"slept": seconds}
