"""An upstream member killed and restarted under load, in a pool of two with retries and
health checks (docs/upstreams.md): no GET fails, the health checks eject the dead member
within `unhealthy` checks and re-admit it after `healthy` passing ones."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from .fleet import Figures, Fleet, node_config
from .load import Load, failures

INTERVAL, TIMEOUT, HEALTHY, UNHEALTHY = 0.5, 0.5, 2, 2  # the pool's health table below
POOL = (
    "retries = 1\n"
    f'health = {{ path = "/health", interval = {INTERVAL}, timeout = {TIMEOUT}, '
    f"healthy = {HEALTHY}, unhealthy = {UNHEALTHY} }}"
)
# The checks run every INTERVAL; one against a dead member fails at once (refused) or
# within TIMEOUT.
EJECTED_WITHIN = UNHEALTHY * INTERVAL + TIMEOUT
READMITTED_WITHIN = HEALTHY * INTERVAL + TIMEOUT
READMITTED_NOT_BEFORE = (HEALTHY - 1) * INTERVAL  # passes are an interval apart
SLACK = 0.1  # seconds: polling and scheduling on a 2-core machine


async def healthy(session: aiohttp.ClientSession, base: str, member: str) -> bool | None:
    """The node's scalenode_upstream_healthy for `member` (its URL)."""
    async with session.get(f"{base}/metrics") as resp:
        text = (await resp.read()).decode()
    for line in text.splitlines():
        if line.startswith("scalenode_upstream_healthy{") and f'"{member}"' in line:
            return float(line.rsplit(" ", 1)[1]) == 1.0
    return None


async def test_a_killed_member_costs_no_request_and_comes_back(
    fleet: Fleet, session: aiohttp.ClientSession, figures: Figures
) -> None:
    """Member b SIGKILLed under 200 req/s, then restarted: every GET answered 200."""
    a, b = fleet.member("a"), fleet.member("b")
    node = fleet.node("lb", node_config("lb", [a, b], pool=POOL))
    base = f"http://127.0.0.1:{node.port}"
    # Each request takes 20 ms at the member: the kill always cuts some off mid-reply.
    async with Load(session, [f"{base}/api/x?delay=0.02"]) as load:
        await asyncio.sleep(1.0)
        b.kill()
        killed = time.monotonic()
        while await healthy(session, base, b.url):
            assert time.monotonic() - killed < 2 * EJECTED_WITHIN, "b was never ejected"
            await asyncio.sleep(0.02)
        ejected_after = time.monotonic() - killed
        await asyncio.sleep(0.5)
        await asyncio.to_thread(b.start)
        restarted = time.monotonic()
        while not [s for s in load.between(restarted, time.monotonic()) if s.member == "b"]:
            assert time.monotonic() - restarted < 2 * READMITTED_WITHIN, "b never came back"
            await asyncio.sleep(0.02)
        back_after = min(s.sent for s in load.samples if s.member == "b" and s.sent >= restarted)
        back_after -= restarted
        await asyncio.sleep(1.0)
        settled = time.monotonic()
    figures.append(("ejected_after_s", round(ejected_after, 3)))
    figures.append(("back_after_s", round(back_after, 3)))
    assert not failures(load.samples), failures(load.samples)[:5]
    assert {s.member for s in load.between(0, killed)} == {"a", "b"}
    assert {s.member for s in load.between(killed + ejected_after, restarted)} == {"a"}
    assert ejected_after <= EJECTED_WITHIN + SLACK, f"ejected after {ejected_after:.2f} s"
    assert READMITTED_NOT_BEFORE - SLACK <= back_after <= READMITTED_WITHIN + SLACK, back_after
    last = load.between(settled - 1.0, settled)
    assert 0.3 <= sum(s.member == "b" for s in last) / len(last) <= 0.7  # back to its share
