"""Runs one node process: uvloop, the listening socket, and a graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from node.app import build_app
from node.config import Settings

log = logging.getLogger("scalenode")


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
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("scalenode.access") if node.access_log else None,
        shutdown_timeout=node.drain_timeout,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, node.host, node.port, reuse_port=reuse_port or None)
        await site.start()
        log.info(
            "node %s (role %s) listening on http://%s:%d", node.name, role, node.host, node.port
        )
        await stop.wait()
        log.info("node %s draining (up to %g s)", node.name, node.drain_timeout)
    finally:
        await runner.cleanup()
    log.info("node %s stopped", node.name)


def run(settings: Settings, role: str, *, reuse_port: bool = False) -> None:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(settings, role, reuse_port=reuse_port))
