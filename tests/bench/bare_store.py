"""The baseline of the store route: aiohttp + uvloop + one asyncpg pool, nothing else.

`python bare_store.py PORT DSN [--pool 10] [--table sn_docs_users] [--buckets 1024]`

GET /users/{key}: the node's own read, `SELECT doc::text, etag FROM <table> WHERE bucket = $1
AND key = $2` (bucket: plugins.shard.buckets.bucket_of(key, buckets), as the node computes
it), answered as JSON with its ETag; 404 if absent.
PUT /users/{key}: the JSON body checked (orjson), then the node's unconditional upsert
statement with a fresh ETag, answered 201 (created) or 200 with the stored document and
its ETag. No If-Match, no read-your-writes token, no headers beyond these: what a hand-written
service doing the same query would do.

The SQL is imported from plugins/shard/postgres.py so that both run the same statements;
the table must exist (the node creates it). The pool has min = max = --pool connections,
opened at start. For experiments only (store_bench.py runs it without them):
--plan-cache-mode sets plan_cache_mode on the pool's sessions (the node sets
force_custom_plan; a plain asyncpg pool leaves the server default), --command-timeout is
asyncpg's per-query timeout (the node sets its `timeout`), and --no-reset skips asyncpg's
reset query on every release (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *, RESET ALL: a
round trip per request, which the node makes too).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal

import asyncpg
import orjson
import uvloop
from aiohttp import web

from plugins.shard.buckets import bucket_of
from plugins.shard.documents import quote
from plugins.shard.postgres_sql import GET, UPSERT

POOL = web.AppKey("pool", asyncpg.Pool)


async def keep_session(conn: asyncpg.Connection) -> None:
    """A pool `reset` that sends nothing (asyncpg still rolls back an open transaction)."""


def make_app(
    dsn: str, size: int, table: str, buckets: int, args: argparse.Namespace
) -> web.Application:
    get_sql = GET.format(t=quote(table))
    upsert_sql = UPSERT.format(t=quote(table))
    settings = {"plan_cache_mode": args.plan_cache_mode} if args.plan_cache_mode else None
    options: dict[str, object] = {"server_settings": settings}
    if args.command_timeout:
        options["command_timeout"] = args.command_timeout
    if args.no_reset:
        options["reset"] = keep_session

    async def pool_ctx(app: web.Application) -> object:
        app[POOL] = await asyncpg.create_pool(dsn, min_size=size, max_size=size, **options)
        yield
        await app[POOL].close()

    async def get(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        async with request.app[POOL].acquire() as conn:
            row = await conn.fetchrow(get_sql, bucket_of(key, buckets), key)
        if row is None:
            return web.json_response({"error": "not_found"}, status=404)
        return web.Response(
            body=row[0].encode(),
            content_type="application/json",
            headers={"ETag": f'"{row[1]}"'},
        )

    async def put(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        body = await request.read()
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            return web.json_response({"error": "bad_json"}, status=400)
        etag = secrets.token_hex(8)
        async with request.app[POOL].acquire() as conn:
            stored, created = await conn.fetchrow(
                upsert_sql, bucket_of(key, buckets), key, body.decode(), etag
            )
        return web.Response(
            status=201 if created else 200,
            body=stored.encode(),
            content_type="application/json",
            headers={"ETag": f'"{etag}"'},
        )

    app = web.Application()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/users/{key}", get)
    app.router.add_put("/users/{key}", put)
    return app


async def serve(args: argparse.Namespace) -> None:
    app = make_app(args.dsn, args.pool, args.table, args.buckets, args)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("dsn")
    parser.add_argument("--pool", type=int, default=10, help="connections (min = max)")
    parser.add_argument("--table", default="sn_docs_users")
    parser.add_argument("--buckets", type=int, default=1024)
    parser.add_argument("--plan-cache-mode", default="", help="e.g. force_custom_plan")
    parser.add_argument("--command-timeout", type=float, default=0.0, help="seconds; 0: none")
    parser.add_argument("--no-reset", action="store_true", help="no reset query on release")
    return parser.parse_args()


if __name__ == "__main__":
    uvloop.run(serve(parse_args()))
