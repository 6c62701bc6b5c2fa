"""Which components each role starts. One table; run.py's --role picks a row."""

from __future__ import annotations

SYSTEM = "system"  # /health, /ready, /metrics
ROUTES = "routes"  # the configured routes and their plugin pipelines
WORKER = "worker"  # queue consumers (the queue issue adds it)
DASHBOARD = "dashboard"  # /dashboard and its feed (the dashboard issue adds it)

# Components are listed only once they exist, so a role never claims what it cannot do;
# worker and dashboard gain their own component in their issues.
ROLE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "all": (SYSTEM, ROUTES),
    "gateway": (SYSTEM, ROUTES),
    "worker": (SYSTEM,),
    "dashboard": (SYSTEM,),
}
ROLES = tuple(ROLE_COMPONENTS)
