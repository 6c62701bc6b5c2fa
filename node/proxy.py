"""The `upstream:NAME` target: a reverse proxy to a pool, nginx-style headers included."""

from __future__ import annotations

from multidict import CIMultiDict

from node.call import Call, Reply
from node.forwarding import TrustedProxies
from node.upstream import UpstreamPool, strip_hop_by_hop

# Request headers never forwarded as received: the client's framing and Host (the
# upstream gets its own), and forwarding headers, which are rebuilt below.
NOT_FORWARDED = frozenset(
    {"host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
)


class UpstreamProxy:
    """Forwards a call to a member of `pool` and returns its reply unchanged but for framing."""

    def __init__(self, pool: UpstreamPool, trusted: TrustedProxies, strip_prefix: str = "") -> None:
        self.pool = pool
        self.trusted = trusted
        self.strip_prefix = strip_prefix

    def upstream_path(self, call: Call) -> str:
        path = call.raw_path or call.path
        if self.strip_prefix:
            path = path[len(self.strip_prefix) :]
            if not path.startswith("/"):
                path = "/" + path
        return f"{path}?{call.query_string}" if call.query_string else path

    def forward_headers(self, call: Call) -> CIMultiDict[str]:
        incoming = call.headers
        headers = CIMultiDict(incoming)
        strip_hop_by_hop(headers, NOT_FORWARDED)
        if self.trusted.is_trusted(call.client):
            # A trusted load balancer's view of the client is kept and extended.
            prior = ", ".join(incoming.getall("X-Forwarded-For", ()))
            headers["X-Forwarded-For"] = f"{prior}, {call.client}" if prior else call.client
            headers["X-Forwarded-Proto"] = incoming.get("X-Forwarded-Proto", call.scheme)
            headers["X-Forwarded-Host"] = incoming.get("X-Forwarded-Host", call.host)
        else:
            headers["X-Forwarded-For"] = call.client
            headers["X-Forwarded-Proto"] = call.scheme
            headers["X-Forwarded-Host"] = call.host
        headers["X-Request-Id"] = call.request_id
        return headers

    async def __call__(self, call: Call) -> Reply:
        reply = await self.pool.send(
            call.method, self.upstream_path(call), self.forward_headers(call), call.body
        )
        if "X-Request-Id" not in reply.headers:
            reply.headers["X-Request-Id"] = call.request_id  # type: ignore[index]
        return reply
