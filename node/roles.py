"""Which components each role starts. One table; run.py's --role picks a row."""

from __future__ import annotations

SYSTEM = "system"  # /health, /ready, /metrics
ROUTES = "routes"  # the configured routes, served over HTTP through their plugin pipelines
WORKER = "worker"  # queued jobs consumed and run through their routes' pipelines
DASHBOARD = "dashboard"  # /dashboard, its feed, and the replica recommendation in /metrics

ROLE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "all": (SYSTEM, ROUTES, WORKER, DASHBOARD),
    "gateway": (SYSTEM, ROUTES, DASHBOARD),
    "worker": (SYSTEM, WORKER),
    "dashboard": (SYSTEM, DASHBOARD),
}
ROLES = tuple(ROLE_COMPONENTS)
