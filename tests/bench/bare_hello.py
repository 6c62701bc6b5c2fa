"""The baseline of the handler route: aiohttp + uvloop hello world, nothing else.

`python bare_hello.py PORT`: GET /hello answers the same JSON body as node.demo:hello.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop
from aiohttp import web

HELLO = b'{"message":"hello from scalenode"}'


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=HELLO, content_type="application/json")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
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
    uvloop.run(serve(int(sys.argv[1])))
