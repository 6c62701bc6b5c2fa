"""A shard member in PostgreSQL: one table of documents through an asyncpg pool. Conditional
writes are single statements (PATCH: one locking transaction), and each write answers the
WAL position after its commit, the read-your-writes token a replica must reach."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
from asyncpg.exceptions import (
    InvalidAuthorizationSpecificationError,
    InvalidCatalogNameError,
    OperatorInterventionError,
)

from node.config import redact_url
from plugins.shard.documents import (
    Document,
    Fenced,
    NotFound,
    PreconditionFailed,
    ShardUnavailable,
    Written,
    like_prefix,
    new_etag,
    require_owned,
)
from plugins.shard.merge_patch import merge_patch
from plugins.shard.postgres_placement import FENCED_STATE, PostgresPlacement, placement_sql
from plugins.shard.postgres_sql import (
    CREATE_LOCK,
    CURRENT_LSN,
    CUSTOM_PLANS,
    MAX_CONNECTIONS,
    REPLAY_LSN,
    document_sql,
)
from plugins.shard.turns import Turns

log = logging.getLogger("scalenode.shard")

RECONNECT_INTERVAL = 1.0  # seconds between attempts to make the pool of a member that is down
# Errors that mean the member cannot serve now (down, restarting, shutting down, its database
# not there yet), as opposed to a statement it refused. Both become ShardUnavailable; only
# these mark the member down in the log.
OUTAGE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,  # connection or pool closed
    asyncpg.PostgresConnectionError,
    OperatorInterventionError,  # 57xxx: admin shutdown, cannot connect now, query canceled
    InvalidCatalogNameError,
    InvalidAuthorizationSpecificationError,
)
DRIVER_ERRORS = (*OUTAGE_ERRORS, asyncpg.PostgresError)


async def no_reset(connection: asyncpg.Connection) -> None:
    """A pooled connection needs no reset between the store's calls."""


class PostgresShard(PostgresPlacement):
    """A member whose documents live in `table` of the database at `dsn`.

    `pool_min`/`pool_max`: the pool's connections; `timeout`: seconds any one call may take,
    connecting and waiting for a pooled connection included; `read_only`: a replica,
    serving reads of its primary's table (never created here) and refusing writes.
    """

    def __init__(
        self,
        name: str,
        dsn: str,
        *,
        table: str,
        pool_min: int = 1,
        pool_max: int = 10,
        timeout: float = 2.0,
        read_only: bool = False,
        write_tokens: bool = True,
    ) -> None:
        self.name = name
        self.dsn = dsn
        self.table = table
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.timeout = timeout
        self.read_only = read_only
        # A write's WAL position, for read-your-writes on replicas: a second round trip per
        # write, so only asked for when the member has replicas to read from.
        self.write_tokens = write_tokens
        self.sql = document_sql(table)
        self.place = placement_sql(table)
        self._pool: asyncpg.Pool | None = None
        # Callers wait their turn here, first come first served, so the pool always has a
        # free connection: its own queue lets a woken waiter lose to a newcomer and go to
        # the back, which put some requests seconds behind (p99 1.8 s at 64 clients, 10 s
        # of connections; the timeout then failed them).
        self._turns = Turns(pool_max)
        self._opening = asyncio.Lock()
        self._next_attempt = 0.0
        self._last_error: BaseException | None = None
        self._up = True  # as last logged
        self._closed = False

    async def start(self) -> None:
        with contextlib.suppress(ShardUnavailable):
            async with self._connection():
                pass

    async def close(self) -> None:
        self._closed = True
        async with self._opening:
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except DRIVER_ERRORS:
                pool.terminate()

    def pool_stats(self) -> dict[str, int]:
        pool = self._pool
        if pool is None:
            return {"size": 0, "in_use": 0, "max": self.pool_max}
        size = pool.get_size()
        return {"size": size, "in_use": size - pool.get_idle_size(), "max": pool.get_max_size()}

    async def current_lsn(self) -> str:
        """The primary's WAL position now (a standby refuses: ShardUnavailable)."""
        async with self._connection() as conn:
            return await conn.fetchval(CURRENT_LSN)

    async def max_connections(self) -> int:
        """The server's max_connections (for the connection budget check at start)."""
        async with self._connection() as conn:
            return await conn.fetchval(MAX_CONNECTIONS)

    async def replay_lsn(self) -> str | None:
        """How far a replica has replayed the primary's WAL; None on a primary."""
        async with self._connection() as conn:
            return await conn.fetchval(REPLAY_LSN)

    async def claim_layout(self, layout: str) -> str:
        async with self._connection() as conn:
            if not self.read_only:
                await conn.execute(self.sql["claim_layout"], layout)
            return await conn.fetchval(self.sql["read_layout"]) or layout

    async def get(self, bucket: int, key: str) -> Document | None:
        row = await self._fetchrow(self.sql["get"], bucket, key)
        require_owned(self.name, bucket, None if row is None else row[2])
        return None if row[0] is None else Document(key, row[0].encode(), row[1])

    async def put(
        self,
        bucket: int,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> Written:
        if if_match is not None and if_none_match:
            raise PreconditionFailed(key)  # a document to match is one that exists
        etag, text = new_etag(), body.decode()
        if if_match is None and not if_none_match and not self.write_tokens and not self.read_only:
            stored, created = await self._fetchrow(self.sql["upsert"], bucket, key, text, etag)
            return Written(Document(key, stored.encode(), etag), created, None)
        async with self._writing() as conn:
            if if_match is not None:
                stored = await conn.fetchval(
                    self.sql["replace_matched"], bucket, key, text, etag, if_match
                )
                created = False
            elif if_none_match:
                stored = await conn.fetchval(self.sql["insert_new"], bucket, key, text, etag)
                created = True
            else:
                stored, created = await conn.fetchrow(self.sql["upsert"], bucket, key, text, etag)
            lsn = await conn.fetchval(CURRENT_LSN) if self.write_tokens and stored else None
        if stored is None:
            await self.fenced_unless_owned(bucket)  # nothing written: only the owner's answer
            raise PreconditionFailed(key)
        return Written(Document(key, stored.encode(), etag), created, lsn)

    async def patch(
        self, bucket: int, key: str, merge: Any, *, if_match: str | None = None
    ) -> Written:
        etag = new_etag()
        async with self._writing() as conn:
            async with conn.transaction():
                row = await conn.fetchrow(self.sql["lock"], bucket, key)
                if row is None:
                    require_owned(
                        self.name, bucket, await conn.fetchval(self.place["state"], bucket)
                    )
                    raise NotFound(key)
                if if_match is not None and row[1] != if_match:
                    require_owned(
                        self.name, bucket, await conn.fetchval(self.place["state"], bucket)
                    )
                    raise PreconditionFailed(key)
                text = json.dumps(merge_patch(json.loads(row[0]), merge), ensure_ascii=False)
                stored = await conn.fetchval(
                    self.sql["replace_matched"], bucket, key, text, etag, row[1]
                )
            lsn = await conn.fetchval(CURRENT_LSN) if self.write_tokens else None
        return Written(Document(key, stored.encode(), etag), False, lsn)

    async def delete(self, bucket: int, key: str, *, if_match: str | None = None) -> Written:
        async with self._writing() as conn:
            deleted = await conn.fetchval(self.sql["delete"], bucket, key, if_match)
            lsn = await conn.fetchval(CURRENT_LSN) if self.write_tokens and deleted else None
        if not deleted:
            # Which condition failed, for the reply only: nothing was written.
            if await self.get(bucket, key) is None:  # Fenced unless the owner
                raise NotFound(key)
            raise PreconditionFailed(key)
        return Written(None, False, lsn)

    async def scan(
        self, buckets: Sequence[int], *, after: str | None, prefix: str | None, limit: int
    ) -> list[Document]:
        pattern = None if prefix is None else like_prefix(prefix)
        async with self._connection() as conn, conn.transaction():
            await conn.execute(CUSTOM_PLANS)
            rows = await conn.fetch(self.sql["scan"], list(buckets), after, pattern, limit)
        return [Document(row[0], row[1].encode(), row[2]) for row in rows]

    def _writing(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        if self.read_only:
            raise ShardUnavailable(f"shard {self.name} is a read-only replica")
        return self._connection()

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """One statement's row: the store's hot path, without a context manager or a
        per-call asyncio.timeout. While the pool is open, a turn is waited for until
        `timeout` (Turns); the pool then has an idle or a new connection (its connect
        timeout bounds that) and `command_timeout` bounds the statement: about `timeout`
        in all, twice at most. Opening the pool goes by the bounded `_connection`."""
        pool = self._pool
        if pool is None:
            async with self._connection() as conn:
                return await conn.fetchrow(sql, *args)
        turns = self._turns
        try:
            await turns.take(asyncio.get_running_loop().time() + self.timeout)
            try:
                conn = await pool.acquire()
                try:
                    row = await conn.fetchrow(sql, *args)
                finally:
                    await pool.release(conn)
            finally:
                turns.give()
            if not self._up:
                self._came_back()
            return row
        except BaseException as exc:
            mapped = self._failure(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one call, all of it within `timeout`."""
        turns = self._turns
        try:
            async with asyncio.timeout(self.timeout):
                pool = self._pool or await self._open()
                await turns.take(asyncio.get_running_loop().time() + self.timeout)
                try:
                    async with pool.acquire() as conn:
                        self._came_back()
                        yield conn
                finally:
                    turns.give()
        except BaseException as exc:
            mapped = self._failure(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def _failure(self, exc: BaseException) -> BaseException:
        """What the store raises for a driver's error (the error itself for any other)."""
        if isinstance(exc, OUTAGE_ERRORS):
            self._went_down(exc)
            return ShardUnavailable(f"shard {self.name} unreachable: {describe(exc)}")
        if isinstance(exc, asyncpg.PostgresError):
            if exc.sqlstate == FENCED_STATE:
                return Fenced(f"shard {self.name}: {exc}")
            return ShardUnavailable(f"shard {self.name} refused the statement: {exc}")
        return exc

    async def _open(self) -> asyncpg.Pool:
        """Make the pool (and the table), at most once every RECONNECT_INTERVAL."""
        async with self._opening:
            if self._closed:
                raise ShardUnavailable(f"shard {self.name} is closed")
            if self._pool is not None:
                return self._pool
            if time.monotonic() < self._next_attempt:
                raise ShardUnavailable(
                    f"shard {self.name} unreachable: {describe(self._last_error)}; "
                    f"next attempt within {RECONNECT_INTERVAL:g} s"
                ) from self._last_error
            self._next_attempt = time.monotonic() + RECONNECT_INTERVAL
            pool = asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                timeout=self.timeout,  # to connect
                command_timeout=self.timeout,
                # asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL)
                # is a round trip per release; the store keeps no session state (its lock is
                # transaction-scoped) and asyncpg still rolls back an open transaction.
                reset=no_reset,
            )
            try:
                await pool
                if not self.read_only:
                    await self._create_table(pool)
            except BaseException as exc:
                pool.terminate()
                if isinstance(exc, Exception):  # not the call's deadline cancelling it
                    self._went_down(exc)
                raise
            self._pool = pool
            return pool

    async def _create_table(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(CREATE_LOCK, f"scalenode.shard:{self.table}")
            await conn.execute(self.sql["create"])
            await conn.execute(self.place["placement"])

    def _went_down(self, exc: BaseException) -> None:
        self._last_error = exc
        if self._up:
            self._up = False
            log.warning(
                "shard %s at %s unreachable (%s); its calls fail until it answers",
                self.name,
                redact_url(self.dsn),
                describe(exc),
            )

    def _came_back(self) -> None:
        if not self._up:
            self._up = True
            log.warning("shard %s at %s answers again", self.name, redact_url(self.dsn))


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "not connected"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
