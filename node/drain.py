"""The part of a drain a load balancer can see: after SIGTERM, `/ready` answers 503
`draining` and every reply carries `Connection: close` for `node.drain_delay` seconds
while the node still serves; then node.server's drain stops accepting.

Why both: a balancer that polls `/ready` stops sending new requests within its check
interval, and one that reuses kept-alive connections (nginx's `keepalive`, HAProxy's
pools) is told to close each one after its reply instead of finding it closed under a
request already sent, which it could not safely retry for a POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import Any

from aiohttp import web

log = logging.getLogger("scalenode")

READY, DRAIN, MAINT = "ready", "drain", "maint"


class NodeState:
    """What the node tells balancers about itself: `ready`, `drain` (finishing, take no
    new work) or `maint` (set by an operator through the admin API)."""

    __slots__ = ("draining", "operator")

    def __init__(self) -> None:
        self.draining = False  # set once, by SIGTERM or SIGINT; never cleared
        self.operator = READY  # what an operator asked for: ready, drain or maint

    @property
    def state(self) -> str:
        if self.operator == MAINT:
            return MAINT
        return DRAIN if self.draining or self.operator == DRAIN else READY

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "draining": self.draining, "operator": self.operator}


NODE_STATE = web.AppKey("node_state", NodeState)


def closing_factory(factory: Any) -> Any:
    """A request factory whose requests are answered with `Connection: close`."""

    def make_request(*args: Any) -> web.BaseRequest:
        request = factory(*args)
        # BaseRequest.keep_alive is a cached property that every response (aiohttp's and
        # node.wire's ReadyResponse) reads when it writes its head: False means "close".
        request._cache["keep_alive"] = False
        return request

    return make_request


def close_after_reply(server: web.Server | None) -> None:
    """From now on every reply on every connection, open or new, says `Connection: close`
    and the connection closes after it. Costs nothing before the drain: the node's
    request factory is swapped only now."""
    if server is None:
        return
    server.closing = True  # type: ignore[attr-defined]  # node.edge's: node.fastpath's replies
    server.request_factory = closing_factory(server.request_factory)
    for handler in server.connections:
        if handler._request_factory is not None:  # None once the connection is lost
            handler._request_factory = closing_factory(handler._request_factory)
        request = handler._current_request
        if request is not None:  # its reply's head is not out yet, or nothing changes
            request._cache["keep_alive"] = False


async def announce_drain(
    runner: web.AppRunner, state: NodeState, delay: float, skip: asyncio.Event
) -> None:
    """Turn `/ready` to 503 and every reply to `Connection: close`, then keep serving for
    `delay` seconds (or until `skip` is set: a second signal, or SIGINT) so that balancers
    stop sending here before the node stops accepting."""
    state.draining = True
    close_after_reply(runner.server)
    if delay <= 0 or skip.is_set():
        return
    log.info("node draining: /ready answers 503 for %g s before the port closes", delay)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(skip.wait(), delay)


def watch_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> asyncio.Event:
    """SIGTERM starts the drain (`stop`); SIGINT (Ctrl-C), or a second signal, starts it
    without the announcement's delay (the returned event)."""
    skip = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set() or signum == signal.SIGINT:
            skip.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return skip


async def stop_listening(runner: web.AppRunner) -> list[socket.socket]:
    """Close the node's listening sockets without resetting connections the kernel has
    already accepted for them: on Linux, closing a listener resets every connection still
    in its accept queue, and a balancer that had sent a POST on one (nginx, which learns
    of a stop only from failures) answers 502, as it cannot retry what it sent. So the
    queue is emptied right before each listener closes, with nothing in between that
    could let the loop run; the connections taken are returned, to be served."""
    taken: list[socket.socket] = []
    for site in list(runner.sites):
        server = getattr(site, "_server", None)  # asyncio.Server; None if never started
        for listener in getattr(server, "sockets", None) or ():
            taken += accept_queued(listener.fileno())
        if server is not None:
            server.close()  # synchronous: stops accepting before anything else runs
        await site.stop()
    return taken


def accept_queued(fileno: int) -> list[socket.socket]:
    """The connections waiting in a listening socket's accept queue (a duplicate of its
    descriptor, non-blocking, so the loop's own listener is untouched)."""
    listener = socket.socket(fileno=os.dup(fileno))
    taken = []
    try:
        listener.setblocking(False)
        while True:
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return taken
            except OSError:  # the queue cannot be read: what is in it is lost, as before
                return taken
            taken.append(connection)
    finally:
        listener.close()


def close_idle(server: web.Server) -> None:
    """Close the kept-alive connections once their current request (if any) is answered.
    A connection that has not had a whole request yet is left open: its request is on its
    way (a balancer sends right after connecting) and is answered with Connection: close."""
    for connection in server.connections:
        if connection._request_count:
            connection.close()


async def adopt(server: web.Server, connections: list[socket.socket]) -> None:
    """Serve connections taken from a closed listener's queue like any other."""
    loop = asyncio.get_running_loop()
    for connection in connections:
        try:
            await loop.connect_accepted_socket(server, connection)
        except OSError:  # the client left meanwhile
            connection.close()


def awaiting_first_request(server: web.Server | None) -> bool:
    """Whether a connection is open that has not had a whole request yet."""
    return server is not None and any(
        connection.transport is not None and not connection._request_count
        for connection in server.connections
    )
