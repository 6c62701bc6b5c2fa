"""The /admin sub-app: operations endpoints that plugins contribute, behind `node.admin_token`.

With a token set, every call needs `Authorization: Bearer <token>`. Without one, only
loopback clients are served (as Kong's admin API listens on localhost by default).
Being a sub-app, its guard costs the routes' hot path nothing.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from node.http import json_response


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def has_bearer(request: web.Request, token: str) -> bool:
    """Whether the request carries `Authorization: Bearer <token>` (compared in constant time)."""
    given = request.headers.get("Authorization", "").encode()
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def admin_app(node: str, token: str, routes: list[web.RouteDef]) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler):
        if token:
            if not has_bearer(request, token):
                return json_response(
                    {"error": "unauthorized", "detail": "admin endpoints need the admin token"},
                    401,
                    node,
                    {"WWW-Authenticate": "Bearer"},
                )
        elif not is_loopback(request.remote):
            return json_response(
                {
                    "error": "forbidden",
                    "detail": "set node.admin_token to use admin endpoints from another host",
                },
                403,
                node,
            )
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            return json_response(
                {"error": exc.reason.lower().replace(" ", "_"), "detail": exc.text or exc.reason},
                exc.status,
                node,
            )
        response.headers["X-Node"] = node
        return response

    app = web.Application(middlewares=[guard])
    app.router.add_routes(routes)
    return app
