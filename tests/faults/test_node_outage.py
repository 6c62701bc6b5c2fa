"""A node SIGKILLed behind another, then restarted, both sharing a private Redis: the
survivor serves every request throughout; its dashboard shows the dead node `stale` after
2.5 s of silence and `down` after 4 s, still listed (docs/dashboard.md, Membership), and the
restarted node serves at once and is `up` again within a heartbeat and a frame."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp

from dashboard.aggregate import DOWN_AFTER, STALE_AFTER
from node.cluster.registry import HEARTBEAT_INTERVAL

from .fleet import Figures, Fleet, node_config
from .load import Load, failures

FRAME = 0.5  # dashboard.interval of both nodes: how old a frame may be
SLACK = 0.3  # seconds: polling, heartbeat and frame scheduling on a 2-core machine


async def frame(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """The dashboard's latest frame as served by `base`."""
    async with session.get(f"{base}/dashboard/api/cluster") as resp:
        return await resp.json()


async def states(session: aiohttp.ClientSession, base: str) -> dict[str, str]:
    """Each listed node's state (up, stale, down, left) on the dashboard served by `base`."""
    return {row["name"]: row["state"] for row in (await frame(session, base))["nodes"]}


async def seconds_until(check, since: float, within: float, what: str) -> float:
    while not await check():
        assert time.monotonic() - since < within, f"not within {within} s: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - since


async def test_a_killed_node_is_marked_down_and_a_restarted_one_serves(
    fleet: Fleet, redis_server, session: aiohttp.ClientSession, figures: Figures
) -> None:
    """Node b SIGKILLed under load, then restarted on its port: node a never fails."""
    member = fleet.member("m")

    def config(name: str) -> str:
        return node_config(name, [member], redis=redis_server.url, dashboard_interval=FRAME)

    a = fleet.node("a", config("a"))
    b = fleet.node("b", config("b"))
    survivor_base, victim_base = f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{b.port}"

    async def both_up() -> bool:
        return await states(session, survivor_base) == {"a": "up", "b": "up"}

    async with Load(session, [f"{survivor_base}/api/x"]) as survivor:
        async with Load(session, [f"{victim_base}/api/x"], workers=2) as victim:
            await seconds_until(both_up, time.monotonic(), 5.0, "both nodes up")
            await asyncio.sleep(0.5)
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait(timeout=5)
            killed = time.monotonic()
        assert victim.between(0, killed) and not failures(victim.between(0, killed - 0.1))

        def b_is(*wanted: str):
            async def check() -> bool:
                return (await states(session, survivor_base)).get("b") in wanted

            return check

        stale_after = await seconds_until(b_is("stale", "down"), killed, 10.0, "b stale")
        down_after = await seconds_until(b_is("down"), killed, 10.0, "b down")
        cluster = (await frame(session, survivor_base))["cluster"]
        assert (cluster["nodes"], cluster["reporting"]) == (2, 1)  # listed, out of the totals
        b = await asyncio.to_thread(fleet.node, "b", config("b"), b.port)
        restarted = time.monotonic()
        async with session.get(f"{victim_base}/api/x") as resp:
            assert (resp.status, resp.headers["X-Node"]) == (200, "b")
        back_after = await seconds_until(both_up, restarted, 5.0, "b up on a's dashboard")
        await asyncio.sleep(0.5)
    stopped = time.monotonic()
    figures.append(("stale_after_s", round(stale_after, 3)))
    figures.append(("down_after_s", round(down_after, 3)))
    figures.append(("back_after_s", round(back_after, 3)))
    assert not failures(survivor.samples), failures(survivor.samples)[:5]
    for second in range(int(stopped - killed)):  # served all along, at half its pace or more
        assert len(survivor.between(killed + second, killed + second + 1)) >= 100, second
    # The last heartbeat came at most HEARTBEAT_INTERVAL before the kill.
    low = STALE_AFTER - HEARTBEAT_INTERVAL - SLACK
    assert low <= stale_after <= STALE_AFTER + FRAME + SLACK, f"stale after {stale_after:.2f} s"
    low = DOWN_AFTER - HEARTBEAT_INTERVAL - SLACK
    assert low <= down_after <= DOWN_AFTER + FRAME + SLACK, f"down after {down_after:.2f} s"
    assert back_after <= HEARTBEAT_INTERVAL + FRAME + SLACK, f"back after {back_after:.2f} s"
