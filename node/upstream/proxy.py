"""The `upstream:NAME` target: a reverse proxy to a pool, nginx-style headers included."""

from __future__ import annotations

from multidict import CIMultiDict

from node.call import Call, Reply
from node.errors import Rejected
from node.forwarding import TrustedProxies
from node.upstream.pool import HOP_BY_HOP, UpstreamPool, end_to_end

# Request headers never forwarded as received: hop-by-hop ones, the client's framing and
# Host (the upstream gets its own), and forwarding headers, which are rebuilt below.
NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
}


def strip_raw_prefix(raw_path: str, prefix: str) -> str:
    """`raw_path` (percent-encoded, as sent) without `prefix`, which the route matched on the
    decoded path: `/pro%78y/a` loses `/proxy` whole, not five characters."""
    if raw_path.startswith(prefix):
        return raw_path[len(prefix) :]
    want, seen, i = len(prefix.encode()), 0, 0
    while seen < want and i < len(raw_path):
        if raw_path[i] == "%" and i + 2 < len(raw_path):
            i += 3  # one encoded byte
            seen += 1
        else:
            seen += len(raw_path[i].encode())
            i += 1
    return raw_path[i:]


class UpstreamProxy:
    """Forwards a call to a member of `pool` and returns its reply unchanged but for framing."""

    def __init__(self, pool: UpstreamPool, trusted: TrustedProxies, strip_prefix: str = "") -> None:
        self.pool = pool
        self.trusted = trusted
        self.strip_prefix = strip_prefix

    def upstream_path(self, call: Call) -> str:
        path = call.raw_path or call.path
        if self.strip_prefix:
            path = strip_raw_prefix(path, self.strip_prefix)
            if not path.startswith("/"):
                path = "/" + path
        return f"{path}?{call.query_string}" if call.query_string else path

    def forward_headers(self, call: Call) -> CIMultiDict[str]:
        incoming = call.headers
        headers = end_to_end(incoming, NOT_FORWARDED)
        client = call.client
        if self.trusted.is_trusted(client):
            # A trusted load balancer's view of the client is kept and extended.
            prior = ", ".join(incoming.getall("X-Forwarded-For", ()))
            headers["X-Forwarded-For"] = f"{prior}, {client}" if prior else client
            headers["X-Forwarded-Proto"] = incoming.get("X-Forwarded-Proto", call.scheme)
            headers["X-Forwarded-Host"] = incoming.get("X-Forwarded-Host", call.host)
        else:
            headers["X-Forwarded-For"] = client
            headers["X-Forwarded-Proto"] = call.scheme
            headers["X-Forwarded-Host"] = call.host
        headers["X-Request-Id"] = call.request_id
        traceparent = call.traceparent
        if traceparent != headers.get("traceparent"):  # the client's was absent or invalid
            headers["traceparent"] = traceparent
            headers.popall("tracestate", None)  # it belonged to the trace not taken up
        return headers

    async def __call__(self, call: Call) -> Reply:
        try:
            reply = await self.pool.send(
                call.method,
                self.upstream_path(call),
                self.forward_headers(call),
                call.body,
                call.shard,  # set by the shard plugin: picks the member of a hash pool
            )
        except Rejected as exc:  # 502/504: the id lets the client's report meet the node's log
            exc.headers.setdefault("X-Request-Id", call.request_id)
            raise
        if "X-Request-Id" not in reply.headers:
            reply.headers["X-Request-Id"] = call.request_id  # type: ignore[index]
        return reply
