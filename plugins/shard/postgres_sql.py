"""The document table's SQL on a PostgreSQL member, for `PostgresShard` (the buckets'
placement and moves have theirs in postgres_placement.py)."""

from __future__ import annotations

from plugins.shard.documents import quote

# Keys compare as "C" (by code point, as SQLite's BINARY does for UTF-8), and so does the
# (bucket, key) index. Two writers starting at once would race on CREATE TABLE IF NOT EXISTS
# (a unique violation in pg_type), hence the advisory lock around it.
CREATE = """
CREATE TABLE IF NOT EXISTS {t} (
    bucket smallint NOT NULL,
    key text COLLATE "C" NOT NULL,
    doc jsonb NOT NULL,
    etag text NOT NULL,
    updated timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, key)
);
CREATE INDEX IF NOT EXISTS {key_index} ON {t} (key);
CREATE TABLE IF NOT EXISTS {meta} (
    id smallint PRIMARY KEY CHECK (id = 1),
    layout text NOT NULL
);
"""
CLAIM_LAYOUT = "INSERT INTO {meta} (id, layout) VALUES (1, $1) ON CONFLICT (id) DO NOTHING"
READ_LAYOUT = "SELECT layout FROM {meta} WHERE id = 1"
CREATE_LOCK = "SELECT pg_advisory_xact_lock(hashtext($1))"
GET = "SELECT doc::text, etag FROM {t} WHERE bucket = $1 AND key = $2"
LOCK = GET + " FOR UPDATE"
# A read answers only from the bucket's owner: a node with a stale map must not read rows
# a rebalance has copied elsewhere (and may have changed there since).
GET_OWNED = """
SELECT d.doc::text, d.etag, b.state FROM {b} b LEFT JOIN {t} d ON d.bucket = b.bucket AND d.key = $2
WHERE b.bucket = $1
"""
# An inserted row has xmax 0; a row the ON CONFLICT branch updated carries our xid there.
UPSERT = """
INSERT INTO {t} (bucket, key, doc, etag) VALUES ($1, $2, $3::jsonb, $4)
ON CONFLICT (bucket, key) DO UPDATE SET doc = excluded.doc, etag = excluded.etag, updated = now()
RETURNING doc::text, xmax = 0
"""
INSERT_NEW = """
INSERT INTO {t} (bucket, key, doc, etag) VALUES ($1, $2, $3::jsonb, $4)
ON CONFLICT (bucket, key) DO NOTHING RETURNING doc::text
"""
REPLACE_MATCHED = """
UPDATE {t} SET doc = $3::jsonb, etag = $4, updated = now()
WHERE bucket = $1 AND key = $2 AND etag = $5 RETURNING doc::text
"""
DELETE = """
DELETE FROM {t} WHERE bucket = $1 AND key = $2 AND ($3::text IS NULL OR etag = $3)
RETURNING true
"""
SCAN = """
SELECT key, doc::text, etag FROM {t}
WHERE bucket = ANY($1::smallint[]) AND ($2::text IS NULL OR key > $2)
  AND ($3::text IS NULL OR key LIKE $3 ESCAPE '\\')
ORDER BY key LIMIT $4
"""
CURRENT_LSN = "SELECT pg_current_wal_lsn()::text"
REPLAY_LSN = "SELECT pg_last_wal_replay_lsn()::text"
MAX_CONNECTIONS = "SELECT current_setting('max_connections')::int"
# Plan a list's SCAN for its values, every time. Its best plan depends on them: a few
# buckets read their rows by the primary key and sort them, many walk the key index and stop
# after `limit` rows, and only known values turn "$n IS NULL OR ..." and the LIKE prefix into
# index ranges. After five runs PostgreSQL may keep a generic plan for good (it did at 5k
# rows), which reads every row of the buckets and sorts: at 50k rows and 512 buckets 9.7 ms,
# against 0.05 ms plus 0.4 ms of planning (EXPLAIN ANALYZE, PG 15). Only for SCAN: the point
# statements' generic plans are as good, and planning each one cost ~60 us a call.
CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"


def document_sql(table: str) -> dict[str, str]:
    """The statements of `table`, its names quoted in."""
    t, meta = quote(table), quote(f"{table}_meta")
    return {
        "create": CREATE.format(t=t, key_index=quote(f"{table}_key"), meta=meta),
        "claim_layout": CLAIM_LAYOUT.format(meta=meta),
        "read_layout": READ_LAYOUT.format(meta=meta),
        "get": GET_OWNED.format(t=t, b=quote(f"{table}_buckets")),
        "lock": LOCK.format(t=t),
        "upsert": UPSERT.format(t=t),
        "insert_new": INSERT_NEW.format(t=t),
        "replace_matched": REPLACE_MATCHED.format(t=t),
        "delete": DELETE.format(t=t),
        "scan": SCAN.format(t=t),
    }
