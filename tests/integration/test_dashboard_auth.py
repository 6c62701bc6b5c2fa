"""Access to /dashboard with node.admin_token: token once, then cookie; Bearer; else 401."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from testkit.node_server import NodeServer

from node.app import build_app

from .dashboard_helpers import dashboard_settings

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = build_app(dashboard_settings(interval=0.1, token=TOKEN), "all")
    async with TestClient(NodeServer(app, host="127.0.0.1")) as client:
        yield client


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/api/cluster", "/dashboard/ws"])
async def test_without_the_token_everything_is_401_with_no_page(client, path):
    """No token, no page: a JSON 401 that names nothing of the cluster."""
    resp = await client.get(path)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    body = await resp.text()
    assert "<html" not in body and "dash-a" not in body
    assert (await resp.json())["error"] == "unauthorized"


async def test_token_in_the_query_sets_a_strict_cookie_and_redirects(client):
    """?token= once: 303 to the clean URL with an HttpOnly SameSite=Strict cookie; then 200."""
    resp = await client.get(f"/dashboard?token={TOKEN}&w=5", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/dashboard?w=5"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert TOKEN not in cookie  # the cookie is derived from the token, not the token
    page = await client.get("/dashboard")  # the client's jar now holds the cookie
    assert page.status == 200
    assert "instance-count" in await page.text()
    async with client.ws_connect("/dashboard/ws") as ws:
        assert (await ws.receive_json())["served_by"] == "dash-a"


async def test_a_wrong_token_in_the_query_is_401(client):
    """A wrong ?token= sets nothing."""
    resp = await client.get("/dashboard?token=nope", allow_redirects=False)
    assert resp.status == 401
    assert "Set-Cookie" not in resp.headers


async def test_bearer_works_for_scripts_and_the_websocket(client):
    """Authorization: Bearer opens the JSON frame and the feed."""
    resp = await client.get("/dashboard/api/cluster", headers=BEARER)
    assert resp.status == 200
    assert (await resp.json())["served_by"] == "dash-a"
    async with client.ws_connect("/dashboard/ws", headers=BEARER) as ws:
        assert "cluster" in await ws.receive_json()


async def test_the_websocket_handshake_without_credentials_fails(client):
    """The feed refuses the upgrade (401) without the token."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/dashboard/ws")
    assert info.value.status == 401


async def test_no_token_beyond_loopback_warns_at_start(caplog):
    """Listening on 0.0.0.0 with no admin_token logs a warning when the node starts."""
    caplog.set_level(logging.WARNING, logger="scalenode.dashboard")
    app = build_app(dashboard_settings(interval=0.1, host="0.0.0.0"), "all")
    async with TestClient(NodeServer(app, host="127.0.0.1")):
        pass
    assert "open to anyone" in caplog.text


async def test_no_token_on_loopback_is_quiet_and_open(caplog):
    """On loopback without a token the dashboard is open and nothing is logged."""
    caplog.set_level(logging.WARNING, logger="scalenode.dashboard")
    app = build_app(dashboard_settings(interval=0.1), "all")
    async with TestClient(NodeServer(app, host="127.0.0.1")) as client:
        assert (await client.get("/dashboard")).status == 200
    assert "open to anyone" not in caplog.text


@pytest.mark.parametrize(
    "path", ["/dashboard/nope", "/dashboard/static/nope.js", "/dashboard/static/..%2Fweb.py"]
)
async def test_unknown_dashboard_path_is_a_json_404(client, path):
    """Past the guard, an unknown path under /dashboard (a static file not listed among the
    assets included) is a JSON 404 like the node's own."""
    resp = await client.get(path, headers=BEARER)
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


async def test_static_assets_are_served_behind_the_guard(client):
    """A listed asset is served with the bearer token, refused without it."""
    resp = await client.get("/dashboard/static/dashboard.js", headers=BEARER)
    assert resp.status == 200 and "WebSocket" in await resp.text()
    assert (await client.get("/dashboard/static/dashboard.js")).status == 401
