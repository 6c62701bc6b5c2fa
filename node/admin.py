"""The /admin sub-app: operations endpoints that plugins contribute, behind `node.admin_token`.

With a token set, every call needs `Authorization: Bearer <token>`. Without one, only
loopback clients are served (as Kong's admin API listens on localhost by default).
Its guard wraps each handler, so the routes' hot path never sees it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web

from node.wire import json_response

Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    guard = admin_guard(node, token)
    app = web.Application()
    app.router.add_routes(
        [web.RouteDef(r.method, r.path, guard(r.handler), r.kwargs) for r in routes]
    )
    return app


def admin_guard(node: str, token: str) -> Callable[[Endpoint], Endpoint]:
    """Wraps each admin handler. Not a middleware: one sub-app with a middleware makes
    aiohttp run the middleware machinery on every request of the whole node (~10k
    instructions, measured with callgrind)."""

    def wrap(handler: Endpoint) -> Endpoint:
        async def guarded(request: web.Request) -> web.StreamResponse:
            refusal = refuse(request, node, token)
            if refusal is not None:
                return refusal
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                return json_response(
                    {
                        "error": exc.reason.lower().replace(" ", "_"),
                        "detail": exc.text or exc.reason,
                    },
                    exc.status,
                    node,
                )
            return response

        return guarded

    return wrap


def refuse(request: web.Request, node: str, token: str) -> web.Response | None:
    """The 401/403 an admin call gets, or None when it may go on."""
    if token:
        if has_bearer(request, token):
            return None
        return json_response(
            {"error": "unauthorized", "detail": "admin endpoints need the admin token"},
            401,
            node,
            {"WWW-Authenticate": "Bearer"},
        )
    if is_loopback(request.remote):
        return None
    return json_response(
        {
            "error": "forbidden",
            "detail": "set node.admin_token to use admin endpoints from another host",
        },
        403,
        node,
    )
