"""The routes every HTTP-serving node answers itself: /health, /ready, /metrics."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from node.backends import Probe
from node.drain import READY, NodeState
from node.wire import json_response


def add_system_routes(
    app: web.Application,
    *,
    node: str,
    role: str,
    probes: list[Probe],
    tolerated: set[str],
    required: set[str],
    registry: CollectorRegistry,
    state: NodeState | None = None,
) -> None:
    pid = os.getpid()

    async def health(request: web.Request) -> web.Response:
        return json_response({"status": "ok", "node": node, "role": role, "pid": pid}, 200, node)

    async def ready(request: web.Request) -> web.Response:
        if state is not None and state.state != READY:
            # Draining (after SIGTERM) or held by an operator: balancers stop sending here.
            status = "draining" if state.state == "drain" else "maintenance"
            detail = f"node {node} is {status}; it takes no new work"
            body = {"status": status, "error": status, "detail": detail, "node": node}
            return json_response(body, 503, node)
        failures = await asyncio.gather(*(probe.check() for probe in probes))
        backends = {
            probe.name: {"ok": True} if failure is None else {"ok": False, "error": failure}
            for probe, failure in zip(probes, failures, strict=True)
        }
        failing = [name for name, state in backends.items() if not state["ok"]]
        critical = [name for name in failing if name not in tolerated or name in required]
        if critical:
            body = {
                "status": "unavailable",
                "error": "backend_unavailable",
                "detail": f"not answering: {', '.join(critical)}",
                "node": node,
                "backends": backends,
            }
            return json_response(body, 503, node)
        # A backend every user degrades through keeps the node in the balancer: "degraded".
        status = "degraded" if failing else "ready"
        return json_response({"status": status, "node": node, "backends": backends}, 200, node)

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
