"""The /dashboard sub-app: the page, its static files, the WebSocket feed and the JSON frame.

A sub-app of its own, so the routes' plugins (the rate limiter) never see its traffic; its
guard wraps each handler, so the routes never pay for it. With `node.admin_token` set, every
path needs the token: `?token=` once sets an HttpOnly cookie, `Authorization: Bearer`
serves scripts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from dashboard.hub import FeedHub
from node.admin import has_bearer
from node.wire import json_response

log = logging.getLogger("scalenode.dashboard")

HERE = Path(__file__).resolve().parent
COOKIE = "scalenode_dashboard"
# A viewer gets ~1 frame a second; small socket buffers make a stalled browser show up as
# a full queue within seconds instead of after megabytes of buffered frames. 32 KiB a
# round trip is still far more than a frame a second needs, even across an ocean.
SEND_BUFFER = 32 * 1024
WRITE_HIGH_WATER = 16 * 1024  # bytes unsent in the transport before a send waits
HUB = web.AppKey("dashboard_hub", FeedHub)
VERSIONS = web.AppKey("dashboard_asset_versions", dict[str, str])
STATIC = HERE / "static"
ASSETS = ("dashboard.css", "dashboard.js", "uPlot.min.css", "uPlot.iife.min.js", "uPlot.LICENSE")
Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the cookie is not the admin token."""
    return hmac.new(token.encode(), b"scalenode dashboard", hashlib.sha256).hexdigest()


def listens_beyond_loopback(host: str) -> bool:
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: assume it is reachable from elsewhere


def auth_guard(node: str, token: str) -> Callable[[Endpoint], Endpoint]:
    """Wraps each dashboard handler. Not a middleware: a sub-app with one makes aiohttp run
    the middleware machinery on every request of the whole node (~10k instructions)."""
    session = cookie_value(token).encode()

    def unauthorized(detail: str) -> web.Response:
        body = {"error": "unauthorized", "detail": detail}
        return json_response(body, 401, node, {"WWW-Authenticate": "Bearer"})

    def wrap(handler: Endpoint) -> Endpoint:
        if not token:
            return handler

        async def guarded(request: web.Request) -> web.StreamResponse:
            given = request.query.get("token")
            if given is not None:
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return unauthorized("wrong token")
                return token_accepted(request, token)
            cookie = request.cookies.get(COOKIE, "").encode()
            if has_bearer(request, token) or hmac.compare_digest(cookie, session):
                return await handler(request)
            return unauthorized("the dashboard needs the admin token (?token=, or a Bearer header)")

        return guarded

    return wrap


def token_accepted(request: web.Request, token: str) -> web.Response:
    """`?token=` was right: set the cookie and send the browser to the clean URL."""
    query = {k: v for k, v in request.query.items() if k != "token"}
    clean = str(request.rel_url.with_query(query or None))
    response = web.Response(status=303, headers={"Location": clean})
    response.set_cookie(
        COOKIE,
        cookie_value(token),
        path=request.app.router["page"].url_for().path,
        httponly=True,
        samesite="Strict",
    )
    return response


def asset_versions() -> dict[str, str]:
    """Each static file's content digest: the page links `?v=<digest>`, so browsers may
    cache them for long and still get a changed file at once."""
    return {name: hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12] for name in ASSETS}


@aiohttp_jinja2.template("dashboard.html")
async def page(request: web.Request) -> dict[str, object]:
    router = request.app.router
    versions = request.app[VERSIONS]
    return {
        "node": request.app[HUB].registry.name,
        "feed_url": router["feed"].url_for().path,
        "api_url": router["cluster"].url_for().path,
        "assets": {
            name: router["static"].url_for(name=name).with_query(v=versions[name])
            for name in ASSETS
        },
    }


async def cluster(request: web.Request) -> web.Response:
    body = await request.app[HUB].full_frame()
    return web.Response(body=body, content_type="application/json")


def shrink_send_buffer(transport: asyncio.Transport | None) -> None:
    if transport is None:
        return
    transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


async def feed(request: web.Request) -> web.WebSocketResponse:
    hub = request.app[HUB]
    ws = web.WebSocketResponse(max_msg_size=4096)  # viewers only listen
    await ws.prepare(request)
    shrink_send_buffer(request.transport)
    viewer = hub.subscribe(ws, request)
    try:
        async for _ in ws:  # reads pings and the close handshake; messages are ignored
            pass
    finally:
        hub.unsubscribe(viewer)
    return ws


def dashboard_app(hub: FeedHub, node: str, token: str, host: str) -> web.Application:
    """The sub-app to mount at /dashboard."""
    guard = auth_guard(node, token)
    app = web.Application()
    app[HUB] = hub
    app[VERSIONS] = asset_versions()
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    app.router.add_get("", guard(page), name="page")
    app.router.add_get("/", guard(page))
    app.router.add_get("/ws", guard(feed), name="feed")
    app.router.add_get("/api/cluster", guard(cluster), name="cluster")

    async def not_found(request: web.Request) -> web.Response:
        body = {"error": "not_found", "detail": f"no dashboard path {request.path}"}
        return json_response(body, 404, node)

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ASSETS:  # only the listed files: no path ever reaches the disk
            return await not_found(request)
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "max-age=86400"})

    app.router.add_get("/static/{name}", guard(static), name="static")
    app.router.add_route("*", "/{tail:.*}", guard(not_found))  # errors are JSON here too

    async def start(app: web.Application) -> None:
        if not token and listens_beyond_loopback(host):
            log.warning(
                "the dashboard on %s is open to anyone who can reach it: set node.admin_token",
                host,
            )
        await hub.start()

    async def stop(app: web.Application) -> None:
        await hub.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app
