"""The connection cap of node.edge's handler (node.max_connections, or what the open-file
limit allows), what the handler turned away, and the /metrics families of both."""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

try:
    import resource
except ImportError:  # Windows: no open-file limit to derive the cap from
    resource = None  # type: ignore[assignment]

# Descriptors kept from the connection cap: listening sockets, backend and upstream pools'
# idle connections, logs, the event loop's own.
FD_RESERVE = 128
# The derived cap's ceiling: about what one process holds in memory and timers with ease;
# more connections want more processes (--processes) or an explicit node.max_connections.
CAP_CEILING = 10_000


def fd_bound() -> int:
    """The most client connections the open-file limit leaves room for: half of it past
    the reserve, since each proxied connection may hold an upstream connection too."""
    if resource is None:
        return CAP_CEILING
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return CAP_CEILING
    return max(1, (soft - FD_RESERVE) // 2)


def connection_cap(configured: int) -> int:
    """node.max_connections, or (when 0) what the open-file limit allows, at most 10 000."""
    return configured or min(fd_bound(), CAP_CEILING)


class EdgeStats:
    """What the edge turned away, counted in plain attributes; exported by EdgeCollector."""

    __slots__ = ("body_timeouts", "cap", "head_timeouts", "malformed", "open", "refused")

    def __init__(self) -> None:
        self.open = 0  # connections admitted and not yet closed
        self.cap = 0  # node.max_connections as resolved when the server started
        self.refused = 0  # connections answered 503 over the cap
        self.head_timeouts = 0
        self.body_timeouts = 0
        self.malformed = 0  # requests answered 400 before routing (parse errors, HTTP/0.9)


EDGE = web.AppKey("edge", EdgeStats)


class EdgeCollector:
    """A prometheus-client collector reading EdgeStats at scrape time."""

    def __init__(self, node: str, stats: EdgeStats) -> None:
        self.node = node
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats, labels = self.stats, [self.node]
        families: list[Metric] = []
        for name, help_text, value in (
            ("connections_open", "Client connections open now.", stats.open),
            ("connections_max", "The connection cap (node.max_connections).", stats.cap),
        ):
            family = GaugeMetricFamily(f"scalenode_{name}", help_text, labels=["node"])
            family.add_metric(labels, value)
            families.append(family)
        refused = CounterMetricFamily(
            "scalenode_connections_refused",
            "Connections answered 503 over the cap.",
            labels=["node"],
        )
        refused.add_metric(labels, stats.refused)
        timeouts = CounterMetricFamily(
            "scalenode_request_timeouts",
            "Requests answered 408: phase=head (header_timeout) or body (body_timeout).",
            labels=["node", "phase"],
        )
        timeouts.add_metric([*labels, "head"], stats.head_timeouts)
        timeouts.add_metric([*labels, "body"], stats.body_timeouts)
        malformed = CounterMetricFamily(
            "scalenode_malformed_requests",
            "Requests answered 400 before routing: unparsable, or HTTP/0.9.",
            labels=["node"],
        )
        malformed.add_metric(labels, stats.malformed)
        yield from (*families, refused, timeouts, malformed)
