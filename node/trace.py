"""W3C Trace Context for the node: a request's `traceparent` (and `tracestate`) go on to the
upstream and into queued jobs unchanged; one that arrives without a valid `traceparent`
starts a trace whose first span is the node's. The access log and error logs name the
trace id and the request id of the request they are about.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aiohttp.abc import AbstractAccessLogger

if TYPE_CHECKING:
    from aiohttp import web

    from node.call import Call

# version "00" as W3C Trace Context level 1 defines it; a later version is read by its first
# four fields (section 4.3: "parse it as version 00"), which this pattern allows.
TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
NO_TRACE, NO_SPAN = "0" * 32, "0" * 16

# Ids are a random per-process prefix and a counter, as node.call's request ids: unique
# across nodes (64 random bits) at a tenth of the cost of fresh random bytes per request.
_TRACE_PREFIX = os.urandom(8).hex()
_SPAN_PREFIX = os.urandom(4).hex()
_counter = itertools.count(1)

# The call the current task serves (set by the HTTP adapter per request), for log lines.
CURRENT_CALL: ContextVar[Call | None] = ContextVar("scalenode_call", default=None)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a valid `traceparent`, else None (W3C Trace Context section 3.2)."""
    if not traceparent:
        return None
    found = TRACEPARENT.match(traceparent.strip())
    if found is None:
        return None
    version, trace_id, parent_id, _, rest = found.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == NO_TRACE:
        return None
    if parent_id == NO_SPAN:
        return None
    return trace_id


def new_traceparent() -> str:
    """A new trace, sampled, whose parent span is the node's (section 3.2.2)."""
    n = next(_counter)
    return f"00-{_TRACE_PREFIX}{n:016x}-{_SPAN_PREFIX}{n & 0xFFFFFFFF:08x}-01"


def traceparent_for(given: str | None) -> str:
    """`given` when it is valid (forwarded unchanged), else a new trace's traceparent."""
    if given is not None and trace_id_of(given) is not None:
        return given
    return new_traceparent()


def current_ids() -> tuple[str, str] | None:
    """(trace id, request id) of the call this task serves, or None outside one."""
    call = CURRENT_CALL.get()
    if call is None:
        return None
    return call.traceparent[3:35], call.request_id


class TraceFilter(logging.Filter):
    """Adds ` trace=<id> request_id=<id>` to warnings and errors logged while a request
    is served (a route failing, an upstream refusing), so a log line meets its request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and not hasattr(record, "trace_id"):
            ids = current_ids()
            if ids is not None:
                record.trace_id, record.request_id = ids
                record.msg = f"{record.getMessage()} trace={ids[0]} request_id={ids[1]}"
                record.args = ()
        return True


def install_log_context() -> None:
    """Put the TraceFilter on the root logger's handlers (where every logger's lines go)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, TraceFilter) for f in handler.filters):
            handler.addFilter(TraceFilter())


class AccessLogger(AbstractAccessLogger):
    """One line a request: client, method, path, status, bytes, seconds, the trace id
    and the request id (those the route's call used, or the request's own headers)."""

    def log(self, request: web.BaseRequest, response: Any, time: float) -> None:
        ids = current_ids()
        if ids is None:
            headers = request.headers
            ids = trace_id_of(headers.get("traceparent")) or "-", headers.get("X-Request-Id", "-")
        self.logger.info(
            '%s "%s %s" %d %d %.4f trace=%s request_id=%s',
            request.remote,
            request.method,
            request.path_qs,
            response.status,
            response.body_length,
            time,
            *ids,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
