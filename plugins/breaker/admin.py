"""Breaker operations under /admin (behind `node.admin_token`): list circuits, reset them.

GET  /admin/breaker                 every guarded pool's circuits and their state
POST /admin/breaker/reset           {"upstream": "orders", "member": "10.0.0.5:9000"}
                                    closes the member's circuit (all of the pool's
                                    without "member"); shared circuits close on every node
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from node.wire import json_response
from plugins.breaker.circuit import Circuit


class BreakerAdmin:
    def __init__(self, node: str) -> None:
        self.node = node
        self.pools: dict[str, list[Circuit]] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/breaker", self.handle_list),
            web.post("/breaker/reset", self.handle_reset),
        ]

    async def handle_list(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        pools = {
            pool: [
                {
                    "member": circuit.name.partition("|")[2],
                    "state": circuit.state_name,
                    "retry_after": round(circuit.retry_after(now), 3),
                    "trips": circuit.trips,
                    "doubted": circuit.doubt_until > now,
                    "capped": circuit.capped,
                }
                for circuit in circuits
            ]
            for pool, circuits in self.pools.items()
        }
        return json_response({"upstreams": pools}, 200, self.node)

    async def handle_reset(self, request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("upstream"), str):
            return self.bad_request('send {"upstream": NAME} and optionally "member": HOST:PORT')
        circuits = self.pools.get(body["upstream"])
        if circuits is None:
            known = ", ".join(sorted(self.pools)) or "none"
            return self.bad_request(f"no breaker on upstream {body['upstream']!r} (known: {known})")
        member = body.get("member")
        chosen = [c for c in circuits if member is None or c.name.partition("|")[2] == member]
        if not chosen:
            return self.bad_request(f"upstream {body['upstream']!r} has no member {member!r}")
        for circuit in chosen:
            circuit.close()
            if circuit.on_close is not None:
                circuit.on_close(circuit)  # shared: every node closes it, even if open only there
        reset = [c.name.partition("|")[2] for c in chosen]
        return json_response({"upstream": body["upstream"], "reset": reset}, 200, self.node)

    def bad_request(self, detail: str) -> web.Response:
        return json_response({"error": "bad_request", "detail": detail}, 400, self.node)
