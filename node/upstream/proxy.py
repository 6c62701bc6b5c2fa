"""The `upstream:NAME` target: a reverse proxy to a pool, nginx-style headers included."""

from __future__ import annotations

from node.call import Call, Reply
from node.errors import Rejected
from node.forwarding import TrustedProxies
from node.upstream.pool import HOP_BY_HOP, RequestHeaders, UpstreamPool, connection_named

# Request headers never forwarded as received: hop-by-hop ones, the client's framing and
# Host (the upstream gets its own), and forwarding headers, which are rebuilt below.
NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",  # the call's own (the client's, when it sent a usable one) is added
}
# With a new trace the client's traceparent and tracestate (that trace's) go too.
NOT_FORWARDED_NEW_TRACE = NOT_FORWARDED | {"traceparent", "tracestate"}


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

    def forward_headers(self, call: Call) -> RequestHeaders:
        """The header lines the upstream gets: the client's end-to-end ones in their order
        (RFC 9110 section 7.6.1), then the forwarding headers, the request id and, when the
        client's was absent or invalid, a new traceparent (W3C Trace Context). One pass
        over the client's lines, no header map built: this runs on every proxied request."""
        incoming = call.headers
        named = connection_named(incoming) if "Connection" in incoming else ()
        traceparent = call.traceparent
        # The client's own line goes on as sent, unless it was absent or invalid (a new
        # trace, whose tracestate it would not be) or named by Connection: then the call's
        # traceparent is added. The two drop sets are made once, not per request.
        kept_trace = "traceparent" not in named and traceparent == incoming.get("traceparent")
        drop = NOT_FORWARDED if kept_trace else NOT_FORWARDED_NEW_TRACE
        if named:
            drop = drop | named
        headers = [(name, value) for name, value in incoming.items() if name.lower() not in drop]
        client = call.client
        if self.trusted.is_trusted(client):
            # A trusted load balancer's view of the client is kept and extended.
            prior = ", ".join(incoming.getall("X-Forwarded-For", ()))
            headers += (
                ("X-Forwarded-For", f"{prior}, {client}" if prior else client),
                ("X-Forwarded-Proto", incoming.get("X-Forwarded-Proto", call.scheme)),
                ("X-Forwarded-Host", incoming.get("X-Forwarded-Host", call.host)),
            )
        else:
            headers += (
                ("X-Forwarded-For", client),
                ("X-Forwarded-Proto", call.scheme),
                ("X-Forwarded-Host", call.host),
            )
        headers.append(("X-Request-Id", call.request_id))
        if not kept_trace:
            headers.append(("traceparent", traceparent))
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
