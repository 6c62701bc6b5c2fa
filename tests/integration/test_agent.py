"""The HAProxy agent-check responder: ready and a weight from the node's load, drain, maint;
and /admin/node/state, through which an operator holds a node out."""

from __future__ import annotations

import asyncio
import re
import socket

import pytest
from aiohttp.test_utils import TestClient

from node.agent import FULL_IN_FLIGHT, MIN_WEIGHT, start_agent, weight_percent
from node.config import NodeSettings
from node.drain import NodeState
from node.metrics import NodeStats

from .conftest import NodeFactory, proxy_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def ask(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return (await asyncio.wait_for(reader.read(), 2.0)).decode()
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("cpu", "in_flight", "weight"),
    [
        (0.0, 0, 100),
        (30.0, 0, 70),
        (0.0, FULL_IN_FLIGHT // 2, 50),
        (40.0, FULL_IN_FLIGHT // 4, 60),
        (250.0, 0, MIN_WEIGHT),
        (0.0, FULL_IN_FLIGHT * 3, MIN_WEIGHT),
    ],
)
def test_weight_follows_the_larger_load(cpu: float, in_flight: int, weight: int) -> None:
    """The weight is 100 less the larger of CPU % and in-flight share, never under the floor."""
    assert weight_percent(cpu, in_flight) == weight


async def test_agent_answers_ready_drain_and_maint() -> None:
    """One line a connection: `ready up N%`, then `drain` while draining, `maint` if held."""
    node = NodeSettings(agent_port=free_port())
    state, stats = NodeState(), NodeStats()
    server = await start_agent(node, state, stats, reuse_port=False)
    assert server is not None
    try:
        assert re.fullmatch(r"ready up \d+%\n", await ask(node.agent_port))
        stats.route("/r").in_flight = FULL_IN_FLIGHT // 2
        weight = int(re.fullmatch(r"ready up (\d+)%\n", await ask(node.agent_port))[1])
        assert weight <= 50
        state.operator = "maint"
        assert await ask(node.agent_port) == "maint\n"
        state.operator = "ready"
        state.draining = True
        assert await ask(node.agent_port) == "drain\n"
    finally:
        server.close()
        await server.wait_closed()


async def test_agent_is_off_by_default() -> None:
    """node.agent_port = 0 starts no listener."""
    off = await start_agent(NodeSettings(), NodeState(), NodeStats(), False)
    assert off is None


async def test_operator_holds_the_node_out_through_admin(node_factory: NodeFactory) -> None:
    """PUT /admin/node/state maint turns /ready 503; ready lets it back; junk is a 400."""
    client: TestClient = await node_factory(proxy_settings(["http://127.0.0.1:9"]))
    async with client.put("/admin/node/state", json={"state": "maint"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["state"] == "maint"
    async with client.get("/ready") as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "maintenance"
    async with client.put("/admin/node/state", json={"state": "bogus"}) as resp:
        assert resp.status == 400
    async with client.put("/admin/node/state", json={"state": "ready"}) as resp:
        assert resp.status == 200
    async with client.get("/admin/node/state") as resp:
        assert (await resp.json()) == {"state": "ready", "draining": False, "operator": "ready"}
