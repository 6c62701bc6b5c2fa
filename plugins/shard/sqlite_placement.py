"""Where an embedded (SQLite) member keeps its part of the bucket map and what a rebalance
asks of it; the PostgreSQL twin is plugins/shard/postgres_placement.py. Every write is one
BEGIN IMMEDIATE transaction that reads the bucket's state first, and the rebalance changes
a state in one too: SQLite's write lock orders them, across processes sharing the file."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiosqlite

from plugins.shard.documents import quote, require_owned

T = TypeVar("T")

PLACEMENT = """
CREATE TABLE IF NOT EXISTS {b} (bucket INTEGER PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {maps} (version INTEGER PRIMARY KEY, map TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {moves} (id INTEGER PRIMARY KEY CHECK (id = 1), journal TEXT);
"""
IN_BUCKETS = "bucket IN (SELECT value FROM json_each(?))"
STATEMENTS = {
    "state": "SELECT state FROM {b} WHERE bucket = ?",
    "states": "SELECT bucket, state FROM {b}",
    "seed": "INSERT INTO {b} (bucket, state) VALUES (?, ?) ON CONFLICT DO NOTHING",
    "count_states": "SELECT count(*) FROM {b}",
    "set_states": f"UPDATE {{b}} SET state = ? WHERE {IN_BUCKETS}",
    "latest_map": "SELECT map FROM {maps} WHERE version > ? ORDER BY version DESC LIMIT 1",
    "write_map": "INSERT INTO {maps} (version, map) VALUES (?, ?) ON CONFLICT DO NOTHING",
    "export": f"SELECT bucket, key, doc, etag FROM {{t}} WHERE {IN_BUCKETS} ORDER BY bucket, key",
    "drop_rows": f"DELETE FROM {{t}} WHERE {IN_BUCKETS}",
    "import": "INSERT INTO {t} (bucket, key, doc, etag) VALUES (?, ?, ?, ?)",
    "sizes": f"""SELECT bucket, count(*), sum(length(key) + length(doc) + length(etag)) FROM {{t}}
        WHERE {IN_BUCKETS} GROUP BY bucket""",
    "read_journal": "SELECT journal FROM {moves} WHERE id = 1",
    "write_journal": """INSERT INTO {moves} (id, journal) VALUES (1, ?1)
        ON CONFLICT (id) DO UPDATE SET journal = ?1""",
}


def placement_sql(table: str) -> dict[str, str]:
    names = {
        "t": quote(table),
        "b": quote(f"{table}_buckets"),
        "maps": quote(f"{table}_maps"),
        "moves": quote(f"{table}_moves"),
    }
    return {
        name: sql.format(**names) for name, sql in {"placement": PLACEMENT, **STATEMENTS}.items()
    }


class SqlitePlacement:
    """The placement half of SqliteShard (it supplies `_connection`, `_transaction`, `place`)."""

    place: dict[str, str]
    name: str

    def _connection(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError

    async def _transaction(self, write: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def check_owned(self, db: aiosqlite.Connection, bucket: int) -> None:
        """Raise Fenced unless this member owns `bucket` (inside the write's transaction)."""
        state = await self._one(db, self.place["state"], (bucket,))
        require_owned(self.name, bucket, state)

    async def bucket_states(self) -> dict[int, str]:
        async with self._connection() as db, db.execute(self.place["states"]) as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}

    async def seed_states(self, states: dict[int, str]) -> None:
        async def seed(db: aiosqlite.Connection) -> None:
            if not await self._one(db, self.place["count_states"], ()):
                await db.executemany(self.place["seed"], list(states.items()))

        await self._transaction(seed)

    async def set_states(self, buckets: Sequence[int], state: str) -> None:
        async def update(db: aiosqlite.Connection) -> None:
            await db.execute(self.place["set_states"], (state, json.dumps(list(buckets))))

        await self._transaction(update)

    async def read_map(self, newer_than: int = 0) -> str | None:
        async with self._connection() as db:
            return await self._one(db, self.place["latest_map"], (newer_than,))

    async def write_map(self, version: int, text: str) -> None:
        async with self._connection() as db:
            await db.execute(self.place["write_map"], (version, text))

    async def export(self, buckets: Sequence[int]) -> list[tuple[int, str, str, str]]:
        params = (json.dumps(list(buckets)),)
        async with self._connection() as db, db.execute(self.place["export"], params) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]  # type: ignore[misc]

    async def replace_rows(self, buckets: Sequence[int], rows: Sequence[Sequence[Any]]) -> None:
        async def copy(db: aiosqlite.Connection) -> None:
            await db.execute(self.place["drop_rows"], (json.dumps(list(buckets)),))
            await db.executemany(self.place["import"], [tuple(row) for row in rows])

        await self._transaction(copy)

    async def drop_rows(self, buckets: Sequence[int]) -> None:
        async def drop(db: aiosqlite.Connection) -> None:
            await db.execute(self.place["drop_rows"], (json.dumps(list(buckets)),))

        await self._transaction(drop)

    async def bucket_sizes(self, buckets: Sequence[int]) -> dict[int, tuple[int, int]]:
        params = (json.dumps(list(buckets)),)
        async with self._connection() as db, db.execute(self.place["sizes"], params) as cursor:
            return {row[0]: (row[1], row[2] or 0) for row in await cursor.fetchall()}

    async def read_journal(self) -> str | None:
        async with self._connection() as db:
            return await self._one(db, self.place["read_journal"], ())

    async def write_journal(self, text: str | None) -> None:
        async with self._connection() as db:
            await db.execute(self.place["write_journal"], (text,))

    @staticmethod
    async def _one(db: aiosqlite.Connection, sql: str, params: tuple[Any, ...]) -> Any:
        async with db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]
