"""The embedded shard member: one table of documents in an SQLite file through one aiosqlite
connection. Each write is one BEGIN IMMEDIATE transaction that checks its conditions first."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from plugins.shard.documents import (
    Document,
    NotFound,
    PreconditionFailed,
    ShardUnavailable,
    Written,
    like_prefix,
    new_etag,
    quote,
    require_owned,
)
from plugins.shard.merge_patch import merge_patch
from plugins.shard.sqlite_placement import SqlitePlacement, placement_sql

log = logging.getLogger("scalenode.shard")

T = TypeVar("T")
RECONNECT_INTERVAL = 1.0  # seconds between attempts to open a file that could not be opened
# How long a write waits for another process's write lock (two nodes sharing the file).
BUSY_TIMEOUT = 2.0
NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
# BINARY compares UTF-8 bytes: code point order, the order of PostgreSQL's COLLATE "C".
CREATE = f"""
CREATE TABLE IF NOT EXISTS {{t}} (
    bucket INTEGER NOT NULL,
    key TEXT NOT NULL COLLATE BINARY,
    doc TEXT NOT NULL,
    etag TEXT NOT NULL,
    updated TEXT NOT NULL DEFAULT ({NOW}),
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {{key_index}} ON {{t}} (key);
CREATE TABLE IF NOT EXISTS {{meta}} (id INTEGER PRIMARY KEY CHECK (id = 1), layout TEXT NOT NULL);
"""
CLAIM_LAYOUT = "INSERT INTO {meta} (id, layout) VALUES (1, ?) ON CONFLICT (id) DO NOTHING"
READ_LAYOUT = "SELECT layout FROM {meta} WHERE id = 1"
GET = "SELECT doc, etag FROM {t} WHERE bucket = ? AND key = ?"
# Only the bucket's owner answers a read (see plugins/shard/postgres.py GET_OWNED).
GET_OWNED = """
SELECT d.doc, d.etag, b.state FROM {b} b LEFT JOIN {t} d ON d.bucket = b.bucket AND d.key = ?2
WHERE b.bucket = ?1
"""
WRITE = f"""
INSERT INTO {{t}} (bucket, key, doc, etag) VALUES (?, ?, ?, ?)
ON CONFLICT (bucket, key) DO UPDATE SET doc = excluded.doc, etag = excluded.etag, updated = {NOW}
"""
DELETE = "DELETE FROM {t} WHERE bucket = ? AND key = ?"
SCAN = """
SELECT key, doc, etag FROM {t}
WHERE bucket IN (SELECT value FROM json_each(?1)) AND (?2 IS NULL OR key > ?2)
  AND (?3 IS NULL OR key LIKE ?3 ESCAPE '\\')
ORDER BY key COLLATE BINARY LIMIT ?4
"""
PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",  # in WAL mode: durable across crashes of the process
    "PRAGMA case_sensitive_like = ON",  # LIKE folds ASCII case otherwise
)


def check(current: str | None, if_match: str | None, if_none_match: bool, key: str) -> None:
    if if_match is not None and current != if_match:
        raise PreconditionFailed(key)
    if if_none_match and current is not None:
        raise PreconditionFailed(key)


class SqliteShard(SqlitePlacement):
    """A member whose documents live in `table` of the SQLite file at `path` (its parent
    directories are made on start)."""

    def __init__(self, name: str, path: str | Path, *, table: str) -> None:
        self.name = name
        self.path = Path(path)
        self.table = table
        t = quote(table)
        self.sql = {
            "create": CREATE.format(
                t=t, key_index=quote(f"{table}_key"), meta=quote(f"{table}_meta")
            ),
            "claim_layout": CLAIM_LAYOUT.format(meta=quote(f"{table}_meta")),
            "read_layout": READ_LAYOUT.format(meta=quote(f"{table}_meta")),
            "get": GET.format(t=t),
            "get_owned": GET_OWNED.format(t=t, b=quote(f"{table}_buckets")),
            "write": WRITE.format(t=t),
            "delete": DELETE.format(t=t),
            "scan": SCAN.format(t=t),
        }
        self.place = placement_sql(table)
        self._db: aiosqlite.Connection | None = None
        # One connection: a transaction must not take in another call's statements.
        self._lock = asyncio.Lock()
        self._next_attempt = 0.0
        self._last_error: BaseException | None = None  # of the last attempt to open
        self._closed = False

    async def start(self) -> None:
        with contextlib.suppress(ShardUnavailable):
            async with self._connection():
                pass

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    async def claim_layout(self, layout: str) -> str:
        async with self._connection() as db:
            await db.execute(self.sql["claim_layout"], (layout,))
            async with db.execute(self.sql["read_layout"]) as cursor:
                row = await cursor.fetchone()
        return row[0] if row is not None else layout

    async def get(self, bucket: int, key: str) -> Document | None:
        async with (
            self._connection() as db,
            db.execute(self.sql["get_owned"], (bucket, key)) as cursor,
        ):
            row = await cursor.fetchone()
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
        async def write(db: aiosqlite.Connection) -> Written:
            await self.check_owned(db, bucket)
            current = await self._current(db, bucket, key)
            check(None if current is None else current[1], if_match, if_none_match, key)
            document = Document(key, body, new_etag())
            await db.execute(self.sql["write"], (bucket, key, body.decode(), document.etag))
            return Written(document, current is None, None)

        return await self._transaction(write)

    async def patch(
        self, bucket: int, key: str, merge: Any, *, if_match: str | None = None
    ) -> Written:
        async def write(db: aiosqlite.Connection) -> Written:
            await self.check_owned(db, bucket)
            current = await self._current(db, bucket, key)
            if current is None:
                raise NotFound(key)
            check(current[1], if_match, False, key)
            merged = merge_patch(json.loads(current[0]), merge)
            text = json.dumps(merged, ensure_ascii=False, separators=(",", ":"))
            document = Document(key, text.encode(), new_etag())
            await db.execute(self.sql["write"], (bucket, key, text, document.etag))
            return Written(document, False, None)

        return await self._transaction(write)

    async def delete(self, bucket: int, key: str, *, if_match: str | None = None) -> Written:
        async def write(db: aiosqlite.Connection) -> Written:
            await self.check_owned(db, bucket)
            current = await self._current(db, bucket, key)
            if current is None:
                raise NotFound(key)
            check(current[1], if_match, False, key)
            await db.execute(self.sql["delete"], (bucket, key))
            return Written(None, False, None)

        return await self._transaction(write)

    async def scan(
        self, buckets: Sequence[int], *, after: str | None, prefix: str | None, limit: int
    ) -> list[Document]:
        pattern = None if prefix is None else like_prefix(prefix)
        params = (json.dumps(list(buckets)), after, pattern, limit)
        async with self._connection() as db, db.execute(self.sql["scan"], params) as cursor:
            rows = await cursor.fetchall()
        return [Document(row[0], row[1].encode(), row[2]) for row in rows]

    async def _current(self, db: aiosqlite.Connection, bucket: int, key: str) -> Any:
        async with db.execute(self.sql["get"], (bucket, key)) as cursor:
            return await cursor.fetchone()

    async def _transaction(self, write: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        async with self._connection() as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                result = await write(db)
                await db.execute("COMMIT")
            except BaseException:
                # Queued after whatever statement is still running (a cancelled call's
                # BEGIN may not have started yet); without a transaction it fails, harmlessly.
                with contextlib.suppress(sqlite3.OperationalError):
                    await db.execute("ROLLBACK")
                raise
            return result

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, held by this call alone."""
        async with self._lock:
            try:
                yield self._db or await self._open()
            except (sqlite3.Error, OSError) as exc:
                raise ShardUnavailable(f"shard {self.name} failed: {exc}") from exc

    async def _open(self) -> aiosqlite.Connection:
        """Open the file (and make the table), at most once every RECONNECT_INTERVAL."""
        if self._closed:
            raise ShardUnavailable(f"shard {self.name} is closed")
        if time.monotonic() < self._next_attempt:
            raise ShardUnavailable(
                f"shard {self.name} cannot open {self.path}; next attempt within "
                f"{RECONNECT_INTERVAL:g} s"
            ) from self._last_error
        self._next_attempt = time.monotonic() + RECONNECT_INTERVAL
        db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            for pragma in PRAGMAS:
                await db.execute(pragma)
            await db.executescript(self.sql["create"])
            await db.executescript(self.place["placement"])
        except BaseException as exc:
            if db is not None:
                await db.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                if self._last_error is None:
                    log.warning("shard %s cannot open %s: %s", self.name, self.path, exc)
                self._last_error = exc
            raise
        if self._last_error is not None:
            log.warning("shard %s opened %s", self.name, self.path)
            self._last_error = None
        self._db = db
        return db
