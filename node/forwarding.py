"""Who the client is when load balancers sit in front: `node.trusted_proxies` decides whose
X-Forwarded-* headers are believed."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.call import Call


class TrustedProxies:
    def __init__(self, cidrs: tuple[str, ...]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self.none = not self._networks  # no proxy is trusted: the peer is always the client
        # Peers are few (the load balancers), so the answer per address is cached.
        self.is_trusted = lru_cache(maxsize=4096)(self._is_trusted)

    def _is_trusted(self, address: str) -> bool:
        if not self._networks or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:  # a dual-stack listener's view
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)

    def client_of(self, call: Call) -> str:
        """The call's client: the one function every plugin, the proxy and the logs ask.
        Every X-Forwarded-For line counts, as one list (RFC 9110 section 5.3): a forged
        line sent before the load balancer's own is just another untrusted hop."""
        peer = call.client
        if self.none or not self.is_trusted(peer):
            return peer
        lines = call.headers.getall("X-Forwarded-For", ())
        return self.client_address(peer, ", ".join(lines) if lines else None)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The right-most address that is not a trusted proxy (the peer when it is untrusted)."""
        if not forwarded_for or not self.is_trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops else peer
