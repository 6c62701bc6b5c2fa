"""Which components each role starts. One table; run.py's --role picks a row."""

from __future__ import annotations

SYSTEM = "system"  # /health, /ready, /metrics
ROUTES = "routes"  # the configured routes and their plugin pipelines
WORKER = "worker"  # queue consumers (the queue issue adds it)
DASHBOARD = "dashboard"  # /dashboard, its feed, and the replica recommendation in /metrics

# Components are listed only once they exist, so a role never claims what it cannot do;
# worker gains its own component in its issue.
ROLE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "all": (SYSTEM, ROUTES, DASHBOARD),
    "gateway": (SYSTEM, ROUTES, DASHBOARD),
    "worker": (SYSTEM,),
    "dashboard": (SYSTEM, DASHBOARD),
}
ROLES = tuple(ROLE_COMPONENTS)
