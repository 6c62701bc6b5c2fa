"""W3C Trace Context through the node: traceparent/tracestate forwarded unchanged, a trace
started when absent, carried into queued jobs; logs name the trace id and X-Request-Id."""

from __future__ import annotations

import logging

import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from testkit.node_server import NodeServer

from node.app import build_app
from node.call import Call
from node.trace import AccessLogger, TraceFilter, trace_id_of
from plugins.queue.message import JobMessage

from .conftest import NodeFactory, Upstream, proxy_settings

GIVEN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


async def explode(call: Call) -> None:
    """A handler route that fails: its error log line is the one under test."""
    raise RuntimeError("boom")


async def test_traceparent_and_tracestate_pass_unchanged(
    node: TestClient, upstream: Upstream
) -> None:
    """A valid traceparent and its tracestate reach the upstream byte for byte."""
    async with node.get("/api/x", headers={"traceparent": GIVEN, "tracestate": STATE}) as resp:
        assert resp.status == 200
    seen = upstream.seen[0].headers
    assert seen.getall("traceparent") == [GIVEN]
    assert seen.getall("tracestate") == [STATE]


async def test_a_trace_is_started_when_absent(node: TestClient, upstream: Upstream) -> None:
    """Without traceparent the upstream gets a new valid one, a new trace per request."""
    for _ in range(2):
        async with node.get("/api/x") as resp:
            assert resp.status == 200
    made = [seen.headers["traceparent"] for seen in upstream.seen]
    assert all(trace_id_of(value) for value in made)
    assert all(value.startswith("00-") and value.endswith("-01") for value in made)
    assert len({value[3:35] for value in made}) == 2


async def test_a_traceparent_named_by_connection_still_reaches_the_upstream(
    node: TestClient, upstream: Upstream
) -> None:
    """Connection makes the client's line hop-by-hop; the trace goes on all the same."""
    headers = {"traceparent": GIVEN, "Connection": "traceparent"}
    async with node.get("/api/x", headers=headers) as resp:
        assert resp.status == 200
    assert upstream.seen[0].headers.getall("traceparent") == [GIVEN]


@pytest.mark.parametrize(
    "bad",
    [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  # v00 with extra data
        "garbage",
    ],
)
async def test_an_invalid_traceparent_restarts_the_trace(
    node: TestClient, upstream: Upstream, bad: str
) -> None:
    """An invalid traceparent is replaced by a new trace, and its tracestate dropped."""
    async with node.get("/api/x", headers={"traceparent": bad, "tracestate": STATE}) as resp:
        assert resp.status == 200
    seen = upstream.seen[0].headers
    assert seen.getall("traceparent") != [bad]
    assert trace_id_of(seen["traceparent"]) is not None
    assert "tracestate" not in seen


def test_a_later_version_is_read_by_its_first_fields() -> None:
    """A future version's traceparent with more fields is valid (Trace Context 4.3)."""
    assert trace_id_of("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what") == (
        "4bf92f3577b34da6a3ce929d0e0e4736"
    )


@pytest.mark.parametrize("given", [None, GIVEN])
def test_a_queued_job_keeps_the_trace(given: str | None) -> None:
    """The job a worker runs has the traceparent the gateway's call had, and its tracestate."""
    headers = CIMultiDict({"tracestate": STATE})
    if given:
        headers["traceparent"] = given
    call = Call("POST", "/jobs-route", headers=headers, body=b"x")
    decoded = JobMessage.decode(JobMessage("j1", "/jobs-route", call).encode()).call
    assert decoded.headers.getall("traceparent") == [call.traceparent]
    assert decoded.traceparent == call.traceparent == (given or call.traceparent)
    assert decoded.headers["tracestate"] == STATE
    assert decoded.request_id == call.request_id


async def test_access_log_names_trace_and_request_id(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """An access log line carries the trace id and the X-Request-Id the request used."""
    app = build_app(proxy_settings([upstream.url]), "all")
    logger = logging.getLogger("scalenode.access")
    server = NodeServer(app, host="127.0.0.1")
    await server.start_server(access_log=logger, access_log_class=AccessLogger)
    async with TestClient(server) as client:
        with caplog.at_level(logging.INFO, logger="scalenode.access"):
            async with client.get("/api/x", headers={"traceparent": GIVEN}) as resp:
                request_id = resp.headers["X-Request-Id"]
            async with client.get("/api/y") as resp:
                assert resp.status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "scalenode.access"]
    assert f"trace={GIVEN[3:35]} request_id={request_id}" in lines[0]
    made = upstream.seen[1].headers
    assert f"trace={made['traceparent'][3:35]} request_id={made['X-Request-Id']}" in lines[1]


async def test_error_log_names_trace_and_request_id(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A route's failure is logged with the request's trace id and X-Request-Id."""
    route = {"path": "/boom", "target": "handler:tests.integration.test_trace:explode"}
    client = await node_factory(proxy_settings(["http://127.0.0.1:9"], routes=[route]))
    caplog.handler.addFilter(TraceFilter())
    with caplog.at_level(logging.ERROR):
        headers = {"traceparent": GIVEN, "X-Request-Id": "req-trace-1"}
        async with client.get("/boom", headers=headers) as resp:
            assert resp.status == 500
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failed
    assert f"trace={GIVEN[3:35]} request_id=req-trace-1" in failed[0].getMessage()
