"""An upstream member for the fault tests, run as its own process so it can be killed:
`python member.py PORT NAME` answers every path with `{"member": NAME}` and an `X-Member`
header (GET /health too), on 127.0.0.1 only; `?delay=S` answers after S seconds, so that
requests are in flight when it is killed."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


def member_app(name: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", 0)))
        return web.json_response({"member": name}, headers={"X-Member": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


if __name__ == "__main__":
    port, name = int(sys.argv[1]), sys.argv[2]
    web.run_app(member_app(name), host="127.0.0.1", port=port, print=None, access_log=None)
