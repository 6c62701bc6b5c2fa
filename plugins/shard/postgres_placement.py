"""Where a PostgreSQL member keeps its part of the bucket map, and what a rebalance asks of
it: a state per bucket (`<table>_buckets`: owned, moving, moved, absent), the map's
versions (`<table>_maps`), the move journal (`<table>_moves`), and rows by bucket.

A write to a bucket this member does not own fails in its own transaction: a row trigger
reads the bucket's state FOR SHARE (../shared/reference/sharding.md §7), so the rebalance's
UPDATE to 'moving' waits for the writes in flight and every later write sees the fence. The
mover's own copies pass it with `SET LOCAL scalenode.mover = 'on'`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from plugins.shard.documents import quote, require_owned

FENCED_STATE = "SN001"  # the trigger's SQLSTATE: "this member does not own the bucket now"

PLACEMENT = """
CREATE TABLE IF NOT EXISTS {b} (bucket smallint PRIMARY KEY, state text NOT NULL);
CREATE TABLE IF NOT EXISTS {maps} (version int PRIMARY KEY, map text NOT NULL);
CREATE TABLE IF NOT EXISTS {moves} (id smallint PRIMARY KEY CHECK (id = 1), journal text);
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $fence$
DECLARE
    b smallint;
    s text;
BEGIN
    IF current_setting('scalenode.mover', true) = 'on' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    b := CASE WHEN TG_OP = 'DELETE' THEN OLD.bucket ELSE NEW.bucket END;
    SELECT state INTO s FROM {b} WHERE bucket = b FOR SHARE;
    IF s IS DISTINCT FROM 'owned' THEN
        RAISE EXCEPTION 'bucket % not owned here (state %)', b, coalesce(s, 'none')
            USING ERRCODE = '{state}';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$fence$;
DO $make$ BEGIN
    -- Only when missing: creating a trigger locks the table against writes, briefly, and
    -- every node runs this when its pool opens.
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger WHERE tgrelid = '{t}'::regclass AND tgname = {trigger_name}
    ) THEN
        CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE OR DELETE ON {t}
            FOR EACH ROW EXECUTE FUNCTION {fn}();
    END IF;
END $make$;
"""
STATE = "SELECT state FROM {b} WHERE bucket = $1"
STATES = "SELECT bucket, state FROM {b}"
SEED = """
INSERT INTO {b} (bucket, state) SELECT * FROM unnest($1::smallint[], $2::text[])
ON CONFLICT DO NOTHING
"""
SET_STATES = "UPDATE {b} SET state = $2 WHERE bucket = ANY($1::smallint[])"
LATEST_MAP = "SELECT map FROM {maps} WHERE version > $1 ORDER BY version DESC LIMIT 1"
WRITE_MAP = "INSERT INTO {maps} (version, map) VALUES ($1, $2) ON CONFLICT DO NOTHING"
EXPORT = """
SELECT bucket, key, doc::text, etag FROM {t} WHERE bucket = ANY($1::smallint[]) ORDER BY bucket, key
"""
DROP_ROWS = "DELETE FROM {t} WHERE bucket = ANY($1::smallint[])"
IMPORT = """
INSERT INTO {t} (bucket, key, doc, etag)
SELECT * FROM unnest($1::smallint[], $2::text[], $3::jsonb[], $4::text[])
"""
SIZES = """
SELECT bucket, count(*), coalesce(sum(pg_column_size(d.*)), 0)::bigint FROM {t} d
WHERE bucket = ANY($1::smallint[]) GROUP BY bucket
"""
READ_JOURNAL = "SELECT journal FROM {moves} WHERE id = 1"
WRITE_JOURNAL = """
INSERT INTO {moves} (id, journal) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET journal = $1
"""
MOVER = "SET LOCAL scalenode.mover = 'on'"


def placement_sql(table: str) -> dict[str, str]:
    names = {
        "t": quote(table),
        "b": quote(f"{table}_buckets"),
        "maps": quote(f"{table}_maps"),
        "moves": quote(f"{table}_moves"),
        "fn": quote(f"{table}_fence"),
        "trigger": quote(f"{table}_fence"),
        "trigger_name": "'" + f"{table}_fence".replace("'", "''") + "'",
        "state": FENCED_STATE,
    }
    statements = {
        "placement": PLACEMENT,
        "state": STATE,
        "states": STATES,
        "seed": SEED,
        "set_states": SET_STATES,
        "latest_map": LATEST_MAP,
        "write_map": WRITE_MAP,
        "export": EXPORT,
        "drop_rows": DROP_ROWS,
        "import": IMPORT,
        "sizes": SIZES,
        "read_journal": READ_JOURNAL,
        "write_journal": WRITE_JOURNAL,
    }
    return {name: sql.format(**names) for name, sql in statements.items()}


class PostgresPlacement:
    """The placement half of PostgresShard (it supplies `_connection` and `place`)."""

    place: dict[str, str]
    name: str

    def _connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        raise NotImplementedError

    async def fenced_unless_owned(self, bucket: int) -> None:
        """Raise Fenced when this member does not own `bucket` now (a write that changed
        nothing, or a read that found nothing, is only an answer from the owner)."""
        async with self._connection() as conn:
            state = await conn.fetchval(self.place["state"], bucket)
        require_owned(self.name, bucket, state)

    async def bucket_states(self) -> dict[int, str]:
        async with self._connection() as conn:
            return dict(await conn.fetch(self.place["states"]))

    async def seed_states(self, states: dict[int, str]) -> None:
        """Record every bucket's state unless recorded already (all of them or none)."""
        async with self._connection() as conn:
            await conn.execute(self.place["seed"], list(states), list(states.values()))

    async def set_states(self, buckets: Sequence[int], state: str) -> None:
        """Waits for the writes in flight to those buckets (they hold the row FOR SHARE)."""
        async with self._connection() as conn:
            await conn.execute(self.place["set_states"], list(buckets), state)

    async def read_map(self, newer_than: int = 0) -> str | None:
        async with self._connection() as conn:
            return await conn.fetchval(self.place["latest_map"], newer_than)

    async def write_map(self, version: int, text: str) -> None:
        async with self._connection() as conn:
            await conn.execute(self.place["write_map"], version, text)

    async def export(self, buckets: Sequence[int]) -> list[tuple[int, str, str, str]]:
        """Every row of `buckets`: (bucket, key, doc, etag), by bucket then key."""
        async with self._connection() as conn:
            rows = await conn.fetch(self.place["export"], list(buckets))
        return [tuple(row) for row in rows]  # type: ignore[misc]

    async def replace_rows(self, buckets: Sequence[int], rows: Sequence[Sequence[Any]]) -> None:
        """Make `buckets` hold exactly `rows`, past the fence (the mover's copy)."""
        columns = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
        async with self._moving() as conn:
            await conn.execute(self.place["drop_rows"], list(buckets))
            if rows:
                await conn.execute(self.place["import"], *(list(c) for c in columns))

    async def drop_rows(self, buckets: Sequence[int]) -> None:
        async with self._moving() as conn:
            await conn.execute(self.place["drop_rows"], list(buckets))

    async def bucket_sizes(self, buckets: Sequence[int]) -> dict[int, tuple[int, int]]:
        """bucket -> (rows, bytes) for the buckets that hold rows."""
        async with self._connection() as conn:
            rows = await conn.fetch(self.place["sizes"], list(buckets))
        return {row[0]: (row[1], row[2]) for row in rows}

    async def read_journal(self) -> str | None:
        async with self._connection() as conn:
            return await conn.fetchval(self.place["read_journal"])

    async def write_journal(self, text: str | None) -> None:
        async with self._connection() as conn:
            await conn.execute(self.place["write_journal"], text)

    @contextlib.asynccontextmanager
    async def _moving(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(MOVER)
            yield conn
