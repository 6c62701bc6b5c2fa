"""The baseline of the proxy route: one aiohttp ClientSession behind a catch-all route.

`python bare_proxy.py PORT UPSTREAM_URL`: forwards method, path, query and body to the
upstream and answers its status, body and content type. No header handling at all.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web
from yarl import URL

SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstream: str) -> web.Application:
    base = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read() if request.body_exists else None
        url = URL(base + request.raw_path, encoded=True)
        async with request.app[SESSION].request(
            request.method, url, data=body, allow_redirects=False
        ) as resp:
            data = await resp.read()
            return web.Response(status=resp.status, body=data, content_type=resp.content_type)

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(port: int, upstream: str) -> None:
    runner = web.AppRunner(make_app(upstream), handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))
