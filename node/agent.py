"""HAProxy's agent-check, answered by the node itself (node.agent_port, off by default):
on each connection one line, `drain` or `maint` when the node is draining or held by an
operator, else `ready` and a weight in percent from the node's own CPU and in-flight load,
so HAProxy shifts traffic away from a hot or draining node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import web

from node.config import NodeSettings
from node.drain import DRAIN, MAINT, READY, NodeState
from node.metrics import NodeStats
from node.wire import json_response

log = logging.getLogger("scalenode.agent")

# Requests in flight at which the in-flight share of the load reads 100 %: an aiohttp
# process serves a few thousand requests a second, so this many waiting at once means the
# node's callers queue behind it (or its upstream is slow) and others should take more.
FULL_IN_FLIGHT = 100
# The lowest weight a loaded but healthy node is given: never 0, which would drain it
# (draining is `drain`'s to say) and leave its capacity unused.
MIN_WEIGHT = 10


def weight_percent(cpu_percent: float, in_flight: int) -> int:
    """100 for an idle node, down to MIN_WEIGHT as CPU (of its one core) or in-flight grows."""
    load = max(cpu_percent, 100.0 * in_flight / FULL_IN_FLIGHT)
    return max(MIN_WEIGHT, min(100, round(100.0 - load)))


class LoadMeter:
    """The process's CPU use (percent of one core) since the previous reading."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()
        self._last = 0.0

    def cpu_percent(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        elapsed = wall - self._wall
        if elapsed < 0.2:  # a reading this soon after the last would be noise
            return self._last
        used = 100.0 * (cpu - self._cpu) / elapsed
        self._wall, self._cpu, self._last = wall, cpu, used
        return used


class Agent:
    """What the agent answers: one line of HAProxy's agent protocol."""

    def __init__(self, state: NodeState, stats: NodeStats) -> None:
        self.state = state
        self.stats = stats
        self.meter = LoadMeter()

    def reply(self) -> str:
        state = self.state.state
        if state != READY:
            return f"{state}\n"
        weight = weight_percent(self.meter.cpu_percent(), self.stats.in_flight())
        return f"ready up {weight}%\n"

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # HAProxy may send `agent-send` text first; the answer does not depend on it.
        try:
            with contextlib.suppress(ConnectionError):
                writer.write(self.reply().encode())
                await writer.drain()
        finally:
            writer.close()


async def start_agent(
    node: NodeSettings, state: NodeState, stats: NodeStats, reuse_port: bool
) -> asyncio.Server | None:
    """The agent's listener on node.host:node.agent_port, or None when it is off. With
    `--processes N` every process listens (SO_REUSEPORT); each check reaches one of them."""
    if not node.agent_port:
        return None
    agent = Agent(state, stats)
    server = await asyncio.start_server(
        agent.answer, node.host, node.agent_port, reuse_port=reuse_port or None
    )
    log.info("agent-check on %s:%d", node.host, node.agent_port)
    return server


def state_routes(state: NodeState, node: str) -> list[web.RouteDef]:
    """/admin/node/state: GET the state; PUT {"state": "ready"|"drain"|"maint"} to hold the
    node out of balancers (through /ready and the agent) or let it back in."""

    async def show(request: web.Request) -> web.StreamResponse:
        return json_response(state.snapshot(), 200, node)

    async def change(request: web.Request) -> web.StreamResponse:
        try:
            wanted = (await request.json())["state"]
        except (ValueError, KeyError, TypeError):
            wanted = None
        if wanted not in (READY, DRAIN, MAINT):
            detail = 'send {"state": "ready"}, {"state": "drain"} or {"state": "maint"}'
            return json_response({"error": "bad_request", "detail": detail}, 400, node)
        state.operator = wanted
        log.warning("node %s set to %s by an operator", node, wanted)
        return json_response(state.snapshot(), 200, node)

    return [web.get("/node/state", show), web.put("/node/state", change)]
