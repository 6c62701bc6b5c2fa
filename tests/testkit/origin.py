"""A counting origin for the cache tests: an aiohttp server that counts GETs per path,
bumps a path's version on PUT, and answers slowly or with chosen headers on request.

Query parameters steer one reply: `cc` (its Cache-Control), `tag` (its Cache-Tag),
`delay` (seconds before answering), `size` (a body of that many bytes). `stop()` makes
it unreachable (a dead origin).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp import web


class CountingOrigin:
    def __init__(self) -> None:
        self.gets: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.delay = 0.0  # seconds every GET waits (the slow origin of stampede tests)
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        if request.method in ("PUT", "POST", "PATCH", "DELETE"):
            self.versions[path] += 1
            return web.json_response({"path": path, "version": self.versions[path]})
        self.gets[path] += 1
        delay = float(request.query.get("delay", self.delay))
        if delay:
            await asyncio.sleep(delay)
        if "size" in request.query:  # a large body (the proxy streams those over 1 MiB)
            return web.Response(body=b"x" * int(request.query["size"]))
        headers = {}
        if "cc" in request.query:
            headers["Cache-Control"] = request.query["cc"]
        if "tag" in request.query:
            headers["Cache-Tag"] = request.query["tag"]
        body = {"path": path, "version": self.versions[path], "count": self.gets[path]}
        return web.json_response(body, headers=headers)
