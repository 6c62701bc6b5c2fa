"""A connection's request loop: aiohttp's `RequestHandler.start`, with routes served fast.

aiohttp (pinned to 3.14.5) answers each request through a web.Request, a new task (on
Python 3.11 a whole extra loop turn: no eager tasks), Application._handle and
finish_response. A route request that needs none of that (node.fastpath says which) is
answered here, in the connection's task, by node.fastpath; every other request (a body,
the dashboard, /metrics, a 404) goes exactly aiohttp's way, by `serve_aiohttp`, which is
aiohttp's per-request code. `start` is aiohttp's loop around both; tests/unit/
test_edge_loop.py fails when aiohttp's own `start` changes, so that an upgrade re-reads it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

from aiohttp.helpers import ceil_timeout
from aiohttp.http import RawRequestMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import ERROR, RequestHandler, _ErrInfo

from node import fastpath

if TYPE_CHECKING:
    from node.edge import EdgeServer

# What aiohttp sets on a payload once its request is answered (a read after it fails).
PAYLOAD_ACCESS_ERROR = sys.modules["aiohttp.web_protocol"]._PAYLOAD_ACCESS_ERROR


class RequestLoop(RequestHandler):
    """aiohttp's connection handler whose loop tries node.fastpath first."""

    __slots__ = ("reading",)

    _manager: EdgeServer | None

    def __init__(self, manager: Any, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        # The body node.fastpath is reading, if any: node.edge's body timeout fails it.
        self.reading: StreamReader | None = None

    def connection_lost(self, exc: BaseException | None) -> None:
        reading = self.reading
        super().connection_lost(exc)
        if reading is not None:  # the body's read fails, as aiohttp fails its request's
            reading.set_exception(exc or ConnectionResetError("Connection lost"))

    @property
    def closing(self) -> bool:
        """Whether replies say `Connection: close` now: a drain began (node.drain)."""
        manager = self._manager
        return manager is None or manager.closing

    async def start(self) -> None:
        """aiohttp's `start`: wait for a request, answer it, keep the connection alive or not."""
        loop = self._loop
        manager = self._manager
        assert manager is not None
        keepalive_timeout = self._keepalive_timeout
        routes = manager.routes if not self._logging_enabled else None  # access log: aiohttp's

        while not self._force_close:
            if not self._messages:
                try:
                    # wait for next request
                    self._waiter = loop.create_future()
                    await self._waiter
                finally:
                    self._waiter = None

            message, payload = self._messages.popleft()

            # Free a parser slot; resume reading once drained to low water so
            # pipelining keeps flowing while this request is handled.
            if self._parser is not None:
                self._parser.message_consumed()
            if self._buffer_paused and len(self._messages) <= self._msg_queue_resume_size:
                self._resume_reading_if_drained()

            manager.requests_count += 1
            keep_alive: bool | None = None
            if routes and fastpath.eligible(message):
                keep_alive = await self.serve_fast(message, payload, routes)
            if keep_alive is None:  # not a route's request for the fast path
                keep_alive = await self.serve_aiohttp(message, payload)
                if keep_alive is None:  # the client left mid-reply
                    break

            if keep_alive and not self._close and not self._force_close:
                # start keep-alive timer
                close_time = loop.time() + keepalive_timeout
                self._next_keepalive_close_time = close_time
                if self._keepalive_handle is None:
                    self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
            else:
                break

        # remove handler, close transport if no handlers left
        if not self._force_close:
            self._task_handler = None
            if self.transport is not None:
                self.transport.close()

    async def serve_fast(
        self, message: RawRequestMessage, payload: StreamReader, routes: Any
    ) -> bool | None:
        """node.fastpath's answer: whether the connection goes on, None if the request is
        not one of its routes'. Marked in progress as aiohttp's own handling is, so that a
        shutdown waits for it (RequestHandler.shutdown)."""
        self._request_in_progress = True
        try:
            keep_alive = await fastpath.serve(self, message, payload, routes)
        except asyncio.CancelledError:
            self.log_debug("Ignored premature client disconnection")
            self.force_close()
            raise
        except Exception as exc:
            self.log_exception("Unhandled exception", exc_info=exc)
            self.force_close()
            return False
        finally:
            self._request_in_progress = False
            if self._handler_waiter is not None:
                self._handler_waiter.set_result(None)
        if keep_alive is not None:
            self._keepalive = keep_alive
            if payload is not EMPTY_PAYLOAD:
                payload.set_exception(PAYLOAD_ACCESS_ERROR)  # as aiohttp: no read after this
        return keep_alive

    async def serve_aiohttp(self, message: Any, payload: StreamReader) -> bool | None:
        """One request aiohttp's way (its `start`'s body, 3.14.5): whether the connection
        goes on, None if the client left before the reply was out."""
        loop = self._loop
        # time is only fetched if logging is enabled as otherwise
        # its thrown away and never used.
        start = loop.time() if self._logging_enabled else None
        writer = StreamWriter(self, loop)
        if isinstance(message, _ErrInfo):
            # make request_factory work
            request_handler = self._make_error_handler(message)
            message = ERROR
        else:
            request_handler = self._request_handler
        assert self._request_factory is not None and request_handler is not None

        # Important don't hold a reference to the current task
        # as on traceback it will prevent the task from being
        # collected and will cause a memory leak.
        request = self._request_factory(
            message,
            payload,
            self,
            writer,
            self._task_handler or asyncio.current_task(loop),  # type: ignore[arg-type]
        )
        resp = None
        try:
            # a new task is used for copy context vars (#3406)
            task = loop.create_task(self._handle_request(request, start, request_handler))
            try:
                resp, reset = await task
            except ConnectionError:
                self.log_debug("Ignored premature client disconnection")
                return None

            # Drop the processed task from asyncio.Task.all_tasks() early
            del task
            if reset:
                self.log_debug("Ignored premature client disconnection 2")
                return None

            # notify server about keep-alive
            self._keepalive = bool(resp.keep_alive)

            # check payload
            if not payload.is_eof():
                lingering_time = self._lingering_time
                if not self._force_close and lingering_time:
                    self.log_debug("Start lingering close timer for %s sec.", lingering_time)

                    now = loop.time()
                    end_t = now + lingering_time

                    try:
                        while not payload.is_eof() and now < end_t:
                            async with ceil_timeout(end_t - now):
                                # read and ignore
                                await payload.readany()
                            now = loop.time()
                    except (TimeoutError, asyncio.CancelledError):
                        if (t := asyncio.current_task()) and t.cancelling():
                            raise

                # if payload still uncompleted
                if not payload.is_eof() and not self._force_close:
                    self.log_debug("Uncompleted request.")
                    self.close()

            payload.set_exception(PAYLOAD_ACCESS_ERROR)

        except asyncio.CancelledError:
            self.log_debug("Ignored premature client disconnection")
            self.force_close()
            raise
        except Exception as exc:
            self.log_exception("Unhandled exception", exc_info=exc)
            self.force_close()
        except BaseException:
            self.force_close()
            raise
        finally:
            request._task = None  # type: ignore[assignment] # Break reference cycle
            if self.transport is None and resp is not None:
                self.log_debug("Ignored premature client disconnection.")
        return self._keepalive
