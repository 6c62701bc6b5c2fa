"""The live cluster dashboard: heartbeat metrics (sampler), aggregation, the feed hub and
the /dashboard sub-app with its template and static files."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from dashboard.hub import FeedHub, ReplicasCollector
from dashboard.replicas import ReplicaPolicy
from dashboard.web import dashboard_app
from node.cluster.registry import NodeRegistry
from node.config import Settings


def build_dashboard(
    settings: Settings, registry: NodeRegistry, metrics: CollectorRegistry
) -> web.Application:
    """The /dashboard sub-app over `registry`; adds the recommended replicas to `metrics`."""
    config = settings.dashboard
    policy = ReplicaPolicy(
        minimum=config.replicas_min,
        maximum=config.replicas_max,
        scale_up_cpu=config.scale_up_cpu,
        scale_down_cpu=config.scale_down_cpu,
        p95_target_ms=config.p95_target_ms,
    )
    hub = FeedHub(registry, policy, interval=config.interval)
    node = settings.node
    metrics.register(ReplicasCollector(node.name, hub))
    return dashboard_app(hub, node.name, node.admin_token, node.host)
