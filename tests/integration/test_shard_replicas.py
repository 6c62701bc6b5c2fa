"""Read replicas of a shard (plugins.shard.replicas) against a real PostgreSQL 15 primary and
two streaming replicas (testkit.pg_cluster): lag in WAL bytes, the lag limit, read-your-writes
LSN tokens, a replica stopped and started again, a replica that never answers, the primary
going away. Lag is made deterministic with recovery_min_apply_delay on a replica."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from testkit.pg_cluster import PgCluster

from plugins.shard.replica_choice import (
    ReplicaView,
    candidates,
    format_lsn,
    is_healthy,
    lag_of,
    parse_lsn,
    ready,
    rotate,
)
from plugins.shard.replicas import LSN_WAIT, ReplicaSet

DB = "shard_replicas"
INTERVAL = 0.2
TIMEOUT = 0.5
DELAY = 2.0  # recovery_min_apply_delay of a "delayed" replica
SMALL_LAG = 8 * 1024
BURST_BYTES = 100 * 1024  # at least this much WAL after the first delayed commit

pytestmark = pytest.mark.timeout(60)

MakeSet = Callable[..., Awaitable[ReplicaSet]]


async def eventually(predicate: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll until `predicate()`; the seconds it took."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > seconds:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - began


def replica(rs: ReplicaSet, i: int) -> dict[str, Any]:
    return rs.snapshot()["replicas"][i]


def caught_up(rs: ReplicaSet, *indices: int) -> bool:
    return all(replica(rs, i)["healthy"] and replica(rs, i)["lag_bytes"] == 0 for i in indices)


async def burst(primary: asyncpg.Connection, commits: int = 4) -> str:
    """A small commit, then `commits` commits of ~40 KiB of WAL each; the primary's LSN after.

    A delayed replica stops before the first commit record, so everything after it is lag.
    """
    await primary.execute("INSERT INTO items (tag, body) VALUES ('burst', 'first')")
    for _ in range(commits):
        await primary.execute(
            "INSERT INTO items (tag, body) SELECT 'burst', repeat('x', 200) "
            "FROM generate_series(1, 150)"
        )
    return await primary.fetchval("SELECT pg_current_wal_lsn()::text")


async def write(primary: asyncpg.Connection) -> tuple[str, str]:
    """Insert a row; its tag and the read-your-writes token taken after the commit."""
    tag = uuid.uuid4().hex
    await primary.execute("INSERT INTO items (tag, body) VALUES ($1, 'mine')", tag)
    return tag, await primary.fetchval("SELECT pg_current_wal_lsn()::text")


async def replayed(conn: asyncpg.Connection) -> int:
    return parse_lsn(await conn.fetchval("SELECT pg_last_wal_replay_lsn()::text"))


async def sees(conn: asyncpg.Connection, tag: str) -> bool:
    return await conn.fetchval("SELECT count(*) FROM items WHERE tag = $1", tag) == 1


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(pg_cluster: PgCluster) -> Iterator[str]:
    pg_cluster.create_database(DB)
    pg_cluster.psql(
        pg_cluster.primary_port,
        "CREATE TABLE items (id bigserial PRIMARY KEY, tag text NOT NULL, body text)",
        "CREATE INDEX ON items (tag)",
        database=DB,
    )
    pg_cluster.wait_caught_up()
    yield DB


@pytest.fixture
async def primary(pg_cluster: PgCluster, database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_cluster.dsn(database))
    yield conn
    await conn.close()


@pytest.fixture
async def replica_conns(
    pg_cluster: PgCluster,
    database: str,
) -> AsyncIterator[list[asyncpg.Connection]]:
    conns = [await asyncpg.connect(dsn) for dsn in pg_cluster.replica_dsns(database)]
    yield conns
    for conn in conns:
        await conn.close()


@pytest.fixture
async def make_set(pg_cluster: PgCluster, database: str) -> AsyncIterator[MakeSet]:
    made: list[ReplicaSet] = []

    async def make(replica_dsns: list[str] | None = None, **options: Any) -> ReplicaSet:
        options = {"interval": INTERVAL, "timeout": TIMEOUT, **options}
        dsns = pg_cluster.replica_dsns(database) if replica_dsns is None else replica_dsns
        rs = ReplicaSet(pg_cluster.dsn(database), dsns, **options)
        made.append(rs)
        await rs.start()
        return rs

    yield make
    for rs in made:
        await rs.close()


@pytest.fixture
async def delay(pg_cluster: PgCluster) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
    """delay(i): replica i applies commits DELAY seconds late until the test ends."""
    delayed: set[int] = set()

    async def set_delay(i: int) -> None:
        delayed.add(i)
        await asyncio.to_thread(pg_cluster.set_apply_delay, i, DELAY)

    yield set_delay
    for i in delayed:
        await asyncio.to_thread(pg_cluster.set_apply_delay, i, 0)
    await asyncio.to_thread(pg_cluster.wait_caught_up)


# -- pure logic ----------------------------------------------------------------------------


def test_lsn_text_round_trips() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert parse_lsn("ffffffff/ffffffff") == (1 << 64) - 1
    for value in (0, 1, 0xB374D848, (0x16 << 32) + 0x10, (1 << 64) - 1):
        assert parse_lsn(format_lsn(value)) == value
    assert format_lsn((0x16 << 32) + 0xB374D848) == "16/B374D848"
    for bad in ("", "1/", "/1", "0x1/2", "1/2/3", "-1/0", "100000000/0", "1 / 2", "g/0"):
        with pytest.raises(ValueError):
            parse_lsn(bad)
    for bad_int in (-1, 1 << 64):
        with pytest.raises(ValueError):
            format_lsn(bad_int)


def test_the_choice_is_pure() -> None:
    views = [
        ReplicaView(healthy=True, lag_bytes=0, replay_lsn=1000),
        ReplicaView(healthy=False, lag_bytes=0, replay_lsn=1000),  # not answering
        ReplicaView(healthy=True, lag_bytes=5000, replay_lsn=100),  # too far behind
        ReplicaView(healthy=True, lag_bytes=None, replay_lsn=None),  # not measured yet
        ReplicaView(healthy=True, lag_bytes=10, replay_lsn=990),
    ]
    assert candidates(views, max_lag_bytes=4096) == [0, 4]
    assert candidates(views, max_lag_bytes=5000) == [0, 2, 4]
    assert ready(views, [0, 4], 995) == [0]
    assert ready(views, [0, 4], 1001) == []
    assert [rotate([0, 4], cursor) for cursor in range(4)] == [0, 4, 0, 4]
    assert lag_of(1000, 990) == 10
    assert lag_of(990, 1000) == 0  # a replica probed a moment later than the primary
    assert lag_of(None, 990) is None
    assert is_healthy(True, last_ok=10.0, now=10.3, stale_after=0.4)
    assert not is_healthy(True, last_ok=10.0, now=10.5, stale_after=0.4)  # stale
    assert not is_healthy(False, last_ok=10.0, now=10.1, stale_after=0.4)  # last probe failed
    assert not is_healthy(True, last_ok=None, now=10.0, stale_after=0.4)


# -- against the cluster -------------------------------------------------------------------


async def test_lag_in_bytes_is_zero_idle_and_grows_behind_a_delayed_replica(
    make_set: MakeSet, primary: asyncpg.Connection, delay: Callable[[int], Awaitable[None]]
) -> None:
    rs = await make_set()
    await eventually(lambda: caught_up(rs, 0, 1), 3, "idle replicas at lag 0")
    rounds = rs.rounds
    await eventually(lambda: rs.rounds >= rounds + 3, 2, "three more probe rounds")
    assert caught_up(rs, 0, 1), rs.snapshot()  # still 0 while idle

    await delay(1)
    await burst(primary)
    await eventually(lambda: replica(rs, 1)["lag_bytes"] > BURST_BYTES, 1.5, "replica 1 lags")
    await eventually(lambda: caught_up(rs, 0), 1, "replica 0 at lag 0 meanwhile")
    snapshot = rs.snapshot()
    assert snapshot["replicas"][1]["healthy"]  # lagging is not unhealthy
    assert parse_lsn(snapshot["replicas"][1]["replay_lsn"]) < parse_lsn(snapshot["primary"]["lsn"])

    # It catches up by itself once the delay has passed.
    await eventually(lambda: caught_up(rs, 1), DELAY + 2, "replica 1 caught up after the delay")


async def test_pick_skips_a_lagging_replica_and_falls_back_when_none_qualifies(
    make_set: MakeSet, primary: asyncpg.Connection, delay: Callable[[int], Awaitable[None]]
) -> None:
    rs = await make_set(max_lag_bytes=SMALL_LAG)
    await eventually(lambda: caught_up(rs, 0, 1), 3, "idle replicas at lag 0")
    assert sorted([await rs.pick() for _ in range(4)]) == [0, 0, 1, 1]  # round robin
    assert rs.snapshot()["counters"]["fallbacks"] == 0

    await delay(1)
    await burst(primary)
    await eventually(lambda: replica(rs, 1)["lag_bytes"] > SMALL_LAG, 1.5, "replica 1 lags")
    await eventually(lambda: caught_up(rs, 0), 1, "replica 0 at lag 0")
    assert [await rs.pick() for _ in range(6)] == [0] * 6
    assert rs.snapshot()["counters"]["fallbacks"] == 0

    await delay(0)
    await burst(primary)
    await eventually(lambda: replica(rs, 0)["lag_bytes"] > SMALL_LAG, 1.5, "replica 0 lags")
    assert replica(rs, 1)["lag_bytes"] > SMALL_LAG
    assert [await rs.pick() for _ in range(3)] == [None] * 3
    counters = rs.snapshot()["counters"]
    assert counters["fallbacks"] == 3
    assert counters["lsn_waits"] == 0  # no token: no waiting


async def test_read_your_writes_by_lsn_token(
    make_set: MakeSet,
    primary: asyncpg.Connection,
    replica_conns: list[asyncpg.Connection],
    delay: Callable[[int], Awaitable[None]],
) -> None:
    rs = await make_set()
    await eventually(lambda: caught_up(rs, 0, 1), 3, "idle replicas at lag 0")

    chosen = []
    for _ in range(6):
        tag, token = await write(primary)
        index = await rs.pick(token)
        assert index is not None, rs.snapshot()
        chosen.append(index)
        assert await replayed(replica_conns[index]) >= parse_lsn(token)
        assert await sees(replica_conns[index], tag)
    # The probes ran before each write: pick had to wait (poll) for a replica to reach it.
    assert rs.snapshot()["counters"]["lsn_waits"] >= 1
    assert rs.snapshot()["counters"]["fallbacks"] == 0

    # Replica 1 holds every commit back for DELAY s: only replica 0 can have the row.
    await delay(1)
    tag, token = await write(primary)
    for _ in range(4):
        assert await rs.pick(token) == 0
    assert await sees(replica_conns[0], tag)
    assert await replayed(replica_conns[1]) < parse_lsn(token)
    assert not await sees(replica_conns[1], tag)
    assert await rs.pick() in (0, 1)  # with no token, a small lag is fine

    # Both delayed: the token sends the read to the primary after a ~LSN_WAIT poll.
    await delay(0)
    tag, token = await write(primary)
    fallbacks = rs.snapshot()["counters"]["fallbacks"]
    began = time.monotonic()
    assert await rs.pick(token) is None
    waited = time.monotonic() - began
    assert LSN_WAIT * 0.8 <= waited < LSN_WAIT + 0.5, waited
    counters = rs.snapshot()["counters"]
    assert counters["fallbacks"] == fallbacks + 1
    assert counters["lsn_wait_misses"] >= 1
    assert await sees(primary, tag)
    with pytest.raises(ValueError):
        await rs.pick("not-an-lsn")


async def test_a_stopped_replica_is_unhealthy_within_two_intervals_and_back_after_a_restart(
    make_set: MakeSet, pg_cluster: PgCluster, primary: asyncpg.Connection
) -> None:
    rs = await make_set()
    await eventually(lambda: caught_up(rs, 0, 1), 3, "idle replicas at lag 0")
    try:
        await asyncio.to_thread(pg_cluster.stop_replica, 1)
        took = await eventually(
            lambda: not replica(rs, 1)["healthy"], 2 * INTERVAL + 0.2, "replica 1 unhealthy"
        )
        assert took <= 2 * INTERVAL + 0.2
        assert replica(rs, 1)["error"]
        for _ in range(3):  # across several probe rounds, with and without a token
            _, token = await write(primary)
            assert await rs.pick(token) in (0, None)
            assert [await rs.pick() for _ in range(4)] == [0] * 4
            await asyncio.sleep(INTERVAL)
        assert not replica(rs, 1)["healthy"]
    finally:
        await asyncio.to_thread(pg_cluster.start_replica, 1)
    took = await eventually(lambda: caught_up(rs, 1), 5, "replica 1 back and caught up")
    assert sorted([await rs.pick() for _ in range(4)]) == [0, 0, 1, 1]
    print(f"replica 1 healthy again {took:.2f} s after pg_ctl start returned")


async def test_a_replica_that_never_answers_is_unhealthy_and_the_loop_goes_on(
    make_set: MakeSet,
    pg_cluster: PgCluster,
    database: str,
) -> None:
    with socket.socket() as blackhole:  # accepts connections (backlog), never answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        port = blackhole.getsockname()[1]
        dsns = [pg_cluster.replica_dsn(0, database), f"postgresql://postgres@127.0.0.1:{port}/x"]
        began = time.monotonic()
        rs = await make_set(dsns, timeout=0.3)
        assert time.monotonic() - began < 0.3 + 0.3  # start() waits one round at most
        assert replica(rs, 1) | {"healthy": False, "error": "TimeoutError"} == replica(rs, 1)
        rounds = rs.rounds
        await eventually(lambda: rs.rounds >= rounds + 2, 2, "two more rounds")
        assert [await rs.pick() for _ in range(4)] == [0] * 4
        assert replica(rs, 0)["healthy"]


async def test_the_replicas_serve_while_the_primary_is_down(
    make_set: MakeSet, pg_cluster: PgCluster
) -> None:
    rs = await make_set()
    await eventually(lambda: caught_up(rs, 0, 1), 3, "idle replicas at lag 0")
    try:
        await asyncio.to_thread(pg_cluster.stop_primary)
        await eventually(lambda: not rs.snapshot()["primary"]["healthy"], 1, "primary down")
        rounds = rs.rounds
        await eventually(lambda: rs.rounds >= rounds + 2, 2, "the loop goes on")
        assert sorted([await rs.pick() for _ in range(4)]) == [0, 0, 1, 1]
    finally:
        await asyncio.to_thread(pg_cluster.start_primary)
    await eventually(lambda: rs.snapshot()["primary"]["healthy"], 2, "primary back")
    await eventually(lambda: caught_up(rs, 0, 1), 3, "replicas at lag 0 again")
