"""Runs one node process: uvloop, the listening socket, and a graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from node.agent import start_agent
from node.app import STATS, build_app
from node.config import NodeSettings, Settings
from node.drain import (
    NODE_STATE,
    adopt,
    announce_drain,
    awaiting_first_request,
    close_idle,
    stop_listening,
    watch_signals,
)
from node.edge import EdgeRunner
from node.edge_stats import EDGE
from node.metrics import NodeStats
from node.resources import RESOURCES
from node.trace import AccessLogger

log = logging.getLogger("scalenode")

DRAIN_POLL = 0.05  # seconds between checks of the in-flight count while draining
# Seconds the drain waits for the first request of connections accepted just before the
# port closed (a balancer sends right after connecting); silent ones are then closed.
FIRST_REQUEST_GRACE = 1.0
CANCEL_GRACE = 0.1  # seconds aiohttp gives leftovers after our drain (twice), then cancels


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # uvloop does not build everywhere (Windows); asyncio's loop serves
        return asyncio.new_event_loop
    return uvloop.new_event_loop


async def serve(settings: Settings, role: str, *, reuse_port: bool = False) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting and let in-flight requests finish."""
    app = build_app(settings, role)
    node = settings.node
    runner = node_runner(app, node)
    await runner.setup()
    stop = asyncio.Event()
    skip_delay = watch_signals(asyncio.get_running_loop(), stop)
    agent = None
    try:
        site = web.TCPSite(runner, node.host, node.port, reuse_port=reuse_port or None)
        await site.start()
        agent = await start_agent(node, app[NODE_STATE], app[STATS], reuse_port)
        log.info(
            "node %s (role %s) listening on http://%s:%d (at most %d connections)",
            node.name,
            role,
            node.host,
            node.port,
            app[EDGE].cap,
        )
        await stop.wait()
        await announce_drain(runner, app[NODE_STATE], node.drain_delay, skip_delay)
        log.info("node %s draining (up to %g s)", node.name, node.drain_timeout)
        await drain(runner, app[STATS], node.drain_timeout, app[RESOURCES].on_drain)
    finally:
        if agent is not None:
            agent.close()  # answered `drain` until here
        await runner.cleanup()
    log.info("node %s stopped", node.name)


def node_runner(app: web.Application, node: NodeSettings) -> EdgeRunner:
    """The runner that serves `app`: aiohttp's, with node.edge's connection handler."""
    return EdgeRunner(
        app,
        node,
        handle_signals=False,
        access_log=logging.getLogger("scalenode.access") if node.access_log else None,
        access_log_class=AccessLogger,  # its lines name the trace id and X-Request-Id
        # The drain is ours (see drain()); by the time aiohttp's own shutdown runs, what is
        # still in flight has had its time and is cancelled.
        shutdown_timeout=CANCEL_GRACE,
    )


async def drain(
    runner: web.AppRunner,
    stats: NodeStats,
    seconds: float,
    hooks: Sequence[Callable[[float], Awaitable[None]]] = (),
) -> None:
    """Stop accepting (serving what the kernel had already accepted), ask keep-alive
    connections to close after their current request, and wait until no request is in
    flight or `seconds` have passed. Plugins' drains (a worker's jobs) run alongside,
    within the same `seconds`."""
    queued = await stop_listening(runner)
    server = runner.server
    if server is not None:
        close_idle(server)
        await adopt(server, queued)
    draining = asyncio.gather(*(hook(seconds) for hook in hooks))
    start = time.monotonic()
    deadline = start + seconds
    first_requests_by = start + min(FIRST_REQUEST_GRACE, seconds)

    def busy() -> bool:
        if stats.in_flight():
            return True
        return time.monotonic() < first_requests_by and awaiting_first_request(server)

    # Polled: an Event set by the last request out would cost every request a check.
    while busy() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(DRAIN_POLL)
    if stats.in_flight():
        log.warning("drain timeout: cancelling %d request(s) still in flight", stats.in_flight())
    await draining  # each hook keeps to `seconds` itself


def run(settings: Settings, role: str, *, reuse_port: bool = False) -> None:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(settings, role, reuse_port=reuse_port))
