"""Handlers that queued routes in tests point at: each notes what it was asked, by job."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from node.call import Call, Reply

# request id -> when each run started (monotonic): retries and their delays, per job
RUNS: dict[str, list[float]] = defaultdict(list)
SEEN: dict[str, dict[str, str]] = {}  # request id -> the headers the run saw
HEALED: set[str] = set()  # request ids whose poison is cured (for replays)


def runs(request_id: str) -> list[float]:
    return RUNS[request_id]


async def record(call: Call) -> Reply:
    """Succeeds: echoes what it got."""
    RUNS[call.request_id].append(time.monotonic())
    SEEN[call.request_id] = dict(call.headers)
    body = {"method": call.method, "path": call.path, "params": dict(call.params)}
    body["query"] = call.query_string
    body["body"] = call.body.decode(errors="replace")
    return Reply.json(body, 201, {"X-Made-By": "record"})


async def poison(call: Call) -> Reply:
    """Raises on every run, unless healed."""
    RUNS[call.request_id].append(time.monotonic())
    if call.request_id in HEALED:
        return Reply.text("healed")
    raise RuntimeError("poisoned job")


async def server_error(call: Call) -> Reply:
    """Answers 503 on the first two runs, then 200."""
    RUNS[call.request_id].append(time.monotonic())
    if len(RUNS[call.request_id]) <= 2:
        return Reply.text("try later", status=503)
    return Reply.text("done")


async def refuse(call: Call) -> Reply:
    """A client error: the job's answer, not a failure to retry."""
    RUNS[call.request_id].append(time.monotonic())
    return Reply.json({"error": "unprocessable"}, 422)


async def slow(call: Call) -> Reply:
    """Sleeps `?s=` seconds (default 1)."""
    RUNS[call.request_id].append(time.monotonic())
    await asyncio.sleep(float(call.query.get("s", "1")))
    return Reply.text("slept")
