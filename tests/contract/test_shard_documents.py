"""The document shard contract (plugins/shard/documents.py) on both members: PostgreSQL (a
fresh database for the module, a fresh table per test) and SQLite (a file per test); then
what only the PostgreSQL member does: LSN tokens, fences, replicas. Outages and coming back
are in test_shard_outages.py."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from testkit.postgres import (
    fresh_database,
)

from plugins.shard.documents import (
    Document,
    DocumentShard,
    Fenced,
    NotFound,
    PreconditionFailed,
    ShardUnavailable,
)
from plugins.shard.postgres import PostgresShard
from plugins.shard.replica_choice import parse_lsn
from plugins.shard.sqlite import SqliteShard

ALL_BUCKETS = list(range(8))


async def owning(shard: Any, buckets: int = 8) -> Any:
    """`shard`, started, owning `buckets` (its bucket states recorded, as a set does)."""
    await shard.start()
    await shard.seed_states({bucket: "owned" for bucket in range(buckets)})
    return shard


def as_body(value: Any) -> bytes:
    return json.dumps(value).encode()


def parsed(document: Document | None) -> Any:
    assert document is not None
    return json.loads(document.body)


def fresh_table() -> str:
    return f"docs_{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A database whose default collation is linguistic ("a" < "A" < "b"), so that keys
    ordered by it rather than by code point would show."""
    with fresh_database(icu_locale="en-US") as dsn:
        yield dsn


@pytest.fixture
async def pg(database: str) -> AsyncIterator[PostgresShard]:
    shard = await owning(PostgresShard("pg", database, table=fresh_table()))
    yield shard
    await shard.close()


@pytest.fixture(params=["postgres", "sqlite"])
async def shard(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DocumentShard]:
    """A started member with an empty table; SQLite's file is in directories yet to make."""
    made: DocumentShard
    if request.param == "postgres":
        made = PostgresShard("pg", request.getfixturevalue("database"), table=fresh_table())
    else:
        made = SqliteShard("lite", tmp_path / "data" / "set" / "s0.sqlite3", table="sn_docs_t")
    await owning(made)
    yield made
    await made.close()


async def keys_of(shard: DocumentShard, **scan: Any) -> list[str]:
    options = {"after": None, "prefix": None, "limit": 1000, **scan}
    buckets = options.pop("buckets", ALL_BUCKETS)
    return [document.key for document in await shard.scan(buckets, **options)]


async def test_put_creates_then_replaces(shard: DocumentShard) -> None:
    """The first put creates the document; the next replaces it under a new ETag."""
    first = await shard.put(1, "a", as_body({"v": 1}))
    second = await shard.put(1, "a", as_body({"v": 2}))
    assert first.created and not second.created
    assert first.document and second.document
    assert first.document.etag != second.document.etag
    assert parsed(second.document) == {"v": 2}


async def test_get_answers_the_last_body_and_etag(shard: DocumentShard) -> None:
    """get answers what the last write stored, None for a key not in that bucket."""
    written = await shard.put(1, "a", as_body({"name": "Ada", "tags": ["x", "é"]}))
    got = await shard.get(1, "a")
    assert got == written.document
    assert parsed(got) == {"name": "Ada", "tags": ["x", "é"]}
    assert await shard.get(1, "b") is None
    assert await shard.get(2, "a") is None


async def test_put_if_match_with_the_current_etag_replaces(shard: DocumentShard) -> None:
    """If-Match with the current ETag replaces the document."""
    first = await shard.put(1, "a", as_body({"v": 1}))
    assert first.document
    second = await shard.put(1, "a", as_body({"v": 2}), if_match=first.document.etag)
    assert not second.created
    assert parsed(await shard.get(1, "a")) == {"v": 2}


async def test_put_if_match_with_another_etag_fails(shard: DocumentShard) -> None:
    """If-Match with a stale ETag fails and leaves the document as it was."""
    first = await shard.put(1, "a", as_body({"v": 1}))
    await shard.put(1, "a", as_body({"v": 2}))
    assert first.document
    with pytest.raises(PreconditionFailed):
        await shard.put(1, "a", as_body({"v": 3}), if_match=first.document.etag)
    assert parsed(await shard.get(1, "a")) == {"v": 2}


async def test_put_if_match_on_a_missing_document_fails(shard: DocumentShard) -> None:
    """A missing document matches no ETag: nothing is created."""
    with pytest.raises(PreconditionFailed):
        await shard.put(1, "a", as_body({"v": 1}), if_match="0123456789abcdef")
    assert await shard.get(1, "a") is None


async def test_put_if_none_match_on_an_existing_document_fails(shard: DocumentShard) -> None:
    """If-None-Match: * fails when the document exists, which stays as it was."""
    await shard.put(1, "a", as_body({"v": 1}))
    with pytest.raises(PreconditionFailed):
        await shard.put(1, "a", as_body({"v": 2}), if_none_match=True)
    assert parsed(await shard.get(1, "a")) == {"v": 1}


async def test_put_if_none_match_on_an_absent_document_creates(shard: DocumentShard) -> None:
    """If-None-Match: * creates a document that is not there."""
    written = await shard.put(1, "a", as_body({"v": 1}), if_none_match=True)
    assert written.created
    assert await shard.get(1, "a") == written.document


async def test_patch_merges_nested_objects_and_removes_nulls(shard: DocumentShard) -> None:
    """A merge patch merges objects recursively, removes null members, replaces the rest."""
    before = {"name": "Ada", "address": {"city": "London", "zip": "N1"}, "tags": ["a"], "x": 1}
    first = await shard.put(1, "a", as_body(before))
    merge = {"address": {"zip": None, "street": "Main"}, "tags": ["b"], "x": None, "new": True}
    written = await shard.patch(1, "a", merge)
    after = {"name": "Ada", "address": {"city": "London", "street": "Main"}, "tags": ["b"]}
    assert parsed(written.document) == {**after, "new": True}
    assert not written.created
    assert first.document and written.document
    assert written.document.etag != first.document.etag
    assert await shard.get(1, "a") == written.document


async def test_patch_of_a_missing_document_is_not_found(shard: DocumentShard) -> None:
    """Patching a key with no document raises NotFound and creates nothing."""
    with pytest.raises(NotFound):
        await shard.patch(1, "a", {"v": 1})
    assert await shard.get(1, "a") is None


async def test_patch_if_match(shard: DocumentShard) -> None:
    """A patch with a stale ETag fails; with the current one it applies."""
    first = await shard.put(1, "a", as_body({"v": 1}))
    second = await shard.patch(1, "a", {"v": 2})
    assert first.document and second.document
    with pytest.raises(PreconditionFailed):
        await shard.patch(1, "a", {"v": 3}, if_match=first.document.etag)
    await shard.patch(1, "a", {"w": 4}, if_match=second.document.etag)
    assert parsed(await shard.get(1, "a")) == {"v": 2, "w": 4}


async def test_delete_removes_and_a_new_document_gets_a_new_etag(shard: DocumentShard) -> None:
    """Delete removes the document; deleting again is NotFound; re-created, a fresh ETag."""
    first = await shard.put(1, "a", as_body({"v": 1}))
    deleted = await shard.delete(1, "a")
    assert deleted.document is None and not deleted.created
    assert await shard.get(1, "a") is None
    with pytest.raises(NotFound):
        await shard.delete(1, "a")
    again = await shard.put(1, "a", as_body({"v": 1}))
    assert again.created
    assert again.document and first.document
    assert again.document.etag != first.document.etag


async def test_delete_if_match(shard: DocumentShard) -> None:
    """A delete with a stale ETag fails and keeps the document; with the current one it goes."""
    first = await shard.put(1, "a", as_body({"v": 1}))
    second = await shard.put(1, "a", as_body({"v": 2}))
    assert first.document and second.document
    with pytest.raises(PreconditionFailed):
        await shard.delete(1, "a", if_match=first.document.etag)
    assert await shard.get(1, "a") == second.document
    await shard.delete(1, "a", if_match=second.document.etag)
    assert await shard.get(1, "a") is None


async def test_scan_lists_only_the_buckets_given(shard: DocumentShard) -> None:
    """Only documents of the buckets asked for are listed."""
    for bucket, key in [(1, "a"), (2, "b"), (3, "c"), (2, "d")]:
        await shard.put(bucket, key, as_body({"bucket": bucket}))
    assert await keys_of(shard, buckets=[2, 3]) == ["b", "c", "d"]
    assert await keys_of(shard, buckets=[4]) == []
    assert await keys_of(shard, buckets=[]) == []


async def test_scan_orders_keys_by_code_point(shard: DocumentShard) -> None:
    """Keys come in code point order, across buckets: case apart, non-ASCII after ASCII."""
    keys = ["b", "B", "a", "A", "ab", "a b", "a-b", "é", "e", "ä", "日本", "😀", "\uff5e", "Z"]
    for i, key in enumerate(keys):
        await shard.put(i % 3, key, as_body({}))
    assert await keys_of(shard) == sorted(keys)


async def test_scan_after_is_exclusive(shard: DocumentShard) -> None:
    """`after` lists the keys strictly after it, whether or not it is a key."""
    for key in ["a", "b", "c", "d"]:
        await shard.put(5, key, as_body({}))
    assert await keys_of(shard, after="b") == ["c", "d"]
    assert await keys_of(shard, after="bb") == ["c", "d"]
    assert await keys_of(shard, after="d") == []


async def test_scan_prefix_takes_wildcards_literally(shard: DocumentShard) -> None:
    """A prefix holding %, _ or \\ matches those characters only, and case matters."""
    keys = ["a%b", "a%c", "axb", "a_1", "ab1", "a\\x", "a\\\\y", "A%b", "aXy"]
    for key in keys:
        await shard.put(1, key, as_body({}))
    assert await keys_of(shard, prefix="a%") == ["a%b", "a%c"]
    assert await keys_of(shard, prefix="a_") == ["a_1"]
    assert await keys_of(shard, prefix="a\\") == ["a\\\\y", "a\\x"]
    assert await keys_of(shard, prefix="a\\\\") == ["a\\\\y"]
    assert await keys_of(shard, prefix="aX") == ["aXy"]
    assert await keys_of(shard, prefix="a%", after="a%b") == ["a%c"]
    assert await keys_of(shard, prefix="") == sorted(keys)


async def test_scan_pages_by_limit_and_after(shard: DocumentShard) -> None:
    """`limit` caps a page; paging with the last key as `after` lists every key once."""
    keys = [f"k{i:02d}" for i in range(10)]
    for i, key in enumerate(keys):
        await shard.put(i % 4, key, as_body({"i": i}))
    assert await keys_of(shard, limit=3) == keys[:3]
    listed: list[str] = []
    while page := await keys_of(shard, limit=3, after=listed[-1] if listed else None):
        listed += page
    assert listed == keys


async def test_one_of_concurrent_puts_with_the_same_if_match_wins(shard: DocumentShard) -> None:
    """50 concurrent puts with the same If-Match: exactly one succeeds."""
    first = await shard.put(1, "a", as_body({"v": 0}))
    assert first.document
    etag = first.document.etag
    results = await asyncio.gather(
        *(shard.put(1, "a", as_body({"v": i}), if_match=etag) for i in range(1, 51)),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1
    assert all(isinstance(r, PreconditionFailed) for r in results if r not in won)
    assert await shard.get(1, "a") == won[0].document


async def test_postgres_writes_answer_a_growing_lsn(pg: PostgresShard) -> None:
    """Each PostgreSQL write answers the WAL position after its commit, growing."""
    written = [
        await pg.put(1, "a", as_body({"v": 1})),
        await pg.patch(1, "a", {"v": 2}),
        await pg.put(1, "a", as_body({"v": 3})),
        await pg.delete(1, "a"),
    ]
    lsns = [parse_lsn(w.lsn) for w in written if w.lsn is not None]
    assert len(lsns) == 4
    assert lsns == sorted(set(lsns))
    assert parse_lsn(await pg.current_lsn()) >= lsns[-1]
    assert await pg.replay_lsn() is None  # a primary


async def test_a_member_serves_only_the_buckets_it_owns(shard: Any) -> None:
    """A bucket not `owned` (moving, moved, absent) refuses reads and writes with Fenced,
    whatever their outcome would be; the mover's copy passes; owning it again serves it."""
    await shard.put(1, "a", as_body({"v": 1}))
    await shard.set_states([1], "moving")
    calls = [
        lambda: shard.get(1, "a"),
        lambda: shard.get(1, "missing"),
        lambda: shard.put(1, "a", as_body({"v": 2})),
        lambda: shard.put(1, "b", as_body({}), if_none_match=True),
        lambda: shard.put(1, "a", as_body({}), if_match="not-the-etag"),
        lambda: shard.patch(1, "a", {"v": 3}),
        lambda: shard.patch(1, "missing", {"v": 3}),
        lambda: shard.delete(1, "a"),
        lambda: shard.delete(1, "missing"),
    ]
    for call in calls:
        with pytest.raises(Fenced):
            await call()
    rows = await shard.export([1])
    assert [(b, k, json.loads(d)) for b, k, d, _ in rows] == [(1, "a", {"v": 1})]
    await shard.replace_rows([1], [(1, "c", '{"v": 9}', "e9")])
    await shard.set_states([1], "owned")
    assert await shard.get(1, "a") is None
    assert parsed(await shard.get(1, "c")) == {"v": 9}
    assert (await shard.bucket_sizes([1, 2]))[1][0] == 1


async def test_a_fence_waits_for_the_writes_in_flight(pg: PostgresShard) -> None:
    """set_states to 'moving' waits for a write transaction already past the fence (it
    holds the bucket's state FOR SHARE), so a copy taken after it has that write."""
    other = await asyncpg.connect(pg.dsn)
    try:
        writing = other.transaction()
        await writing.start()
        await other.execute(
            f"INSERT INTO \"{pg.table}\" (bucket, key, doc, etag) VALUES (2, 'w', '{{}}', 'e')"
        )
        fencing = asyncio.create_task(pg.set_states([2], "moving"))
        await asyncio.sleep(0.2)
        assert not fencing.done()  # waiting for the write in flight
        await writing.commit()
        await asyncio.wait_for(fencing, 2)
        assert [row[1] for row in await pg.export([2])] == ["w"]
        with pytest.raises(asyncpg.PostgresError, match="not owned here"):
            await other.execute(
                f"INSERT INTO \"{pg.table}\" (bucket, key, doc, etag) VALUES (2, 'x', '{{}}', 'e')"
            )
    finally:
        await other.close()


async def test_postgres_pool_stats(pg: PostgresShard) -> None:
    """pool_stats shows the pool's size, connections in use and maximum."""
    await pg.get(1, "a")
    assert pg.pool_stats() == {"size": 1, "in_use": 0, "max": 10}


async def test_a_read_only_member_reads_the_primarys_table(database: str) -> None:
    """A replica member creates no table and takes no writes; it reads the primary's."""
    table = fresh_table()
    replica = PostgresShard("pg/replica0", database, table=table, read_only=True)
    primary = PostgresShard("pg", database, table=table)
    await replica.start()
    try:
        with pytest.raises(ShardUnavailable):
            await replica.get(1, "a")  # no table yet
        await owning(primary)
        written = await primary.put(1, "a", as_body({"v": 1}))
        assert await replica.get(1, "a") == written.document
        with pytest.raises(ShardUnavailable):
            await replica.put(1, "a", as_body({"v": 2}))
    finally:
        await primary.close()
        await replica.close()
