"""Read replicas of a PostgreSQL shard: which replica may serve a read.

A `ReplicaSet` probes, every `interval`, the primary's `pg_current_wal_lsn()` and each
replica's `pg_last_wal_replay_lsn()`, one small dedicated connection each (opened lazily,
dropped on any error and opened again on the next probe). A replica's lag is in WAL bytes,
`pg_wal_lsn_diff(primary, replay)` computed here; lag in time
(`now() - pg_last_xact_replay_timestamp()`) grows while the primary is idle, so it is not used.

`pick(min_lsn)` answers the index of a replica for a read, or None for "read the primary":
a healthy replica whose lag is at most `max_lag_bytes`, round robin over those that qualify.
With `min_lsn` (a read-your-writes token: the primary's `pg_current_wal_lsn()` taken after
the write committed) only a replica that has replayed up to it qualifies; when none has yet,
the candidates' replay LSNs are polled for up to `LSN_WAIT` seconds (`wait_for_lsn`, the one
place PostgreSQL 19's `WAIT FOR LSN ... WITH (TIMEOUT ..., NO_THROW)` can replace).

A replica is unhealthy when its last probe failed (no answer within `timeout`, refused, not
in recovery any more) or when its last successful probe is older than 2 x `interval`. While
the primary does not answer, lag is measured against the last primary LSN seen (the replicas
still serve reads; nothing newer can be written meanwhile).

The choice itself is pure, apart from the I/O: plugins/shard/replica_choice.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from node import tasks
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

log = logging.getLogger(__name__)

LSN_WAIT = 0.05  # how long pick() waits for a replica to reach a read-your-writes token
LSN_POLL = 0.005  # between two polls of a replica's replay LSN while waiting
APPLICATION_NAME = "scalenode-replicas"
PRIMARY_PROBE = "SELECT pg_current_wal_lsn()::text"
REPLICA_PROBE = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"


# -- the I/O ---------------------------------------------------------------------------------


class _Link:
    """One dedicated connection, opened lazily and dropped on any failure; one query at a time."""

    def __init__(self, dsn: str, connect_timeout: float) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.conn: asyncpg.Connection | None = None
        self.lock = asyncio.Lock()

    async def fetchrow(self, query: str) -> asyncpg.Record:
        async with self.lock:
            try:
                if self.conn is None or self.conn.is_closed():
                    self.conn = await asyncpg.connect(
                        self.dsn,
                        timeout=self.connect_timeout,
                        statement_cache_size=0,
                        server_settings={"application_name": APPLICATION_NAME},
                    )
                row = await self.conn.fetchrow(query)
            except BaseException:  # a timeout's cancellation too: the protocol state is unknown
                self.drop()
                raise
        if row is None:
            raise RuntimeError(f"{query!r} returned no row")
        return row

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self, seconds: float) -> None:
        conn, self.conn = self.conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), seconds)
        except Exception:
            conn.terminate()


class _Node:
    """Probe state of the primary or of one replica."""

    def __init__(self, name: str, dsn: str, query: str, timeout: float) -> None:
        self.name = name
        self.query = query
        self.link = _Link(dsn, timeout)
        self.lsn: int | None = None  # current (primary) or replayed (replica) LSN
        self.ok = False
        self.last_ok: float | None = None
        self.error: str | None = None
        self.probes = 0
        self.failures = 0
        self.reading: asyncio.Task[None] | None = None  # the probe in flight, shared

    def succeeded(self, lsn: int, now: float) -> None:
        self.probes += 1
        # Monotonic while it answers: a probe that started earlier may finish later.
        if self.lsn is None or lsn > self.lsn or not self.ok:
            self.lsn = lsn
        self.ok, self.last_ok, self.error = True, now, None

    def failed(self, error: BaseException) -> None:
        self.probes += 1
        self.failures += 1
        self.ok = False
        self.error = f"{type(error).__name__}: {error}".rstrip(": ")


def _lsn_of(row: asyncpg.Record, query: str) -> int:
    if query == PRIMARY_PROBE:
        return parse_lsn(row[0])
    in_recovery, replayed = row
    if not in_recovery:
        raise RuntimeError("not in recovery (promoted?): not a replica any more")
    if replayed is None:
        raise RuntimeError("no WAL replayed yet")
    return parse_lsn(replayed)


class ReplicaSet:
    """The replicas of one primary; see the module docstring."""

    def __init__(
        self,
        primary_dsn: str,
        replica_dsns: Sequence[str],
        *,
        max_lag_bytes: int = 16 * 1024 * 1024,
        interval: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        if interval <= 0 or timeout <= 0 or max_lag_bytes < 0:
            raise ValueError("interval and timeout must be > 0, max_lag_bytes >= 0")
        self.max_lag_bytes = max_lag_bytes
        self.interval = interval
        self.timeout = timeout
        self.stale_after = 2 * interval
        self._primary = _Node("the primary", primary_dsn, PRIMARY_PROBE, timeout)
        self._replicas = [
            _Node(f"replica {i}", dsn, REPLICA_PROBE, timeout) for i, dsn in enumerate(replica_dsns)
        ]
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._cursor = 0
        self.picks = 0
        self.fallbacks = 0
        self.lsn_waits = 0
        self.lsn_wait_misses = 0
        self.rounds = 0

    def __len__(self) -> int:
        return len(self._replicas)

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Probe once (so pick() has data at once), then every `interval` in the background."""
        if self._task is not None:
            return
        self._closed = False
        await self.probe()
        self._task = asyncio.create_task(self._loop(), name="shard-replicas")

    async def close(self) -> None:
        """Stop probing and close the connections; pick() then soon answers None."""
        self._closed = True
        task, self._task = self._task, None
        await tasks.stop(task)
        nodes = [self._primary, *self._replicas]
        reads = [node.reading for node in nodes if node.reading and not node.reading.done()]
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        await asyncio.gather(*(node.link.close(self.timeout) for node in nodes))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = loop.time() + self.interval
            try:
                await self.probe()
            except Exception:  # never out of the loop; probe() itself should not raise
                log.exception("shard replicas: a probe round failed")

    async def probe(self) -> None:
        """One round: the primary and every replica, concurrently, each within `timeout`."""
        if self._closed:
            return
        await asyncio.gather(*(self._refresh(node) for node in [self._primary, *self._replicas]))
        self.rounds += 1

    def _refresh(self, node: _Node) -> asyncio.Task[None]:
        """The node's probe in flight, or a new one: concurrent callers share one query."""
        if node.reading is None or node.reading.done():
            node.reading = asyncio.create_task(self._probe(node))
        return node.reading

    async def _probe(self, node: _Node) -> None:
        """Query the node within `timeout` and record the answer; never raises (but cancel)."""
        was_ok = node.ok
        try:
            async with asyncio.timeout(self.timeout):
                row = await node.link.fetchrow(node.query)
            lsn = _lsn_of(row, node.query)
        except Exception as error:  # TimeoutError included; CancelledError (close) is not
            node.failed(error)
            if was_ok or node.failures == 1:
                log.warning("shard replicas: %s is unhealthy: %s", node.name, node.error)
            return
        node.succeeded(lsn, time.monotonic())
        if not was_ok and node.failures:
            log.info("shard replicas: %s answers again", node.name)

    # -- the choice ----------------------------------------------------------------------

    def views(self) -> list[ReplicaView]:
        now = time.monotonic()
        primary = self._primary.lsn
        return [
            ReplicaView(
                healthy=is_healthy(node.ok, node.last_ok, now, self.stale_after),
                lag_bytes=lag_of(primary, node.lsn),
                replay_lsn=node.lsn,
            )
            for node in self._replicas
        ]

    async def pick(self, min_lsn: str | int | None = None) -> int | None:
        """A replica's index for a read, or None: read the primary (counted in `fallbacks`).

        `min_lsn` ('X/Y' or its int) is a read-your-writes token; a malformed one raises
        ValueError. Waits at most ~LSN_WAIT seconds, only when a token is given and no
        candidate has reached it yet.
        """
        target = parse_lsn(min_lsn) if isinstance(min_lsn, str) else min_lsn
        self.picks += 1
        views = self.views()
        pool = candidates(views, self.max_lag_bytes)
        chosen = pool
        if target is not None and pool:
            chosen = ready(views, pool, target)
            if not chosen:
                self.lsn_waits += 1
                if await self._wait_any(pool, target):
                    chosen = ready(self.views(), pool, target)
                else:
                    self.lsn_wait_misses += 1
        if not chosen:
            self.fallbacks += 1
            return None
        index = rotate(chosen, self._cursor)
        self._cursor += 1
        return index

    async def _wait_any(self, pool: Sequence[int], lsn: int) -> bool:
        """True once any replica of `pool` has replayed `lsn`, within LSN_WAIT seconds."""
        waits = {asyncio.create_task(self.wait_for_lsn(i, lsn, LSN_WAIT)) for i in pool}
        try:
            while waits:
                done, waits = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if any(task.exception() is None and task.result() for task in done):
                    return True
            return False
        finally:
            for task in waits:  # cancelling a wait leaves its query (shared, bounded) running
                task.cancel()
            if waits:
                await asyncio.wait(waits)

    async def wait_for_lsn(self, index: int, lsn: int, within: float = LSN_WAIT) -> bool:
        """Whether replica `index` replays `lsn` within `within` seconds (polling its LSN).

        On PostgreSQL 19 this is one statement on the replica:
        WAIT FOR LSN '<lsn>' WITH (TIMEOUT '<within>', NO_THROW).
        """
        node = self._replicas[index]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            if node.ok and node.lsn is not None and node.lsn >= lsn:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closed:
                return False
            # asyncio.wait neither cancels the read on timeout nor when this task is
            # cancelled: the read finishes within `timeout` and records what it saw.
            done, _ = await asyncio.wait({self._refresh(node)}, timeout=remaining)
            if not done or not node.ok:
                return False
            if node.lsn is not None and node.lsn >= lsn:
                return True
            await asyncio.sleep(min(LSN_POLL, max(0.0, deadline - loop.time())))

    # -- what the dashboard shows -------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        primary = self._primary
        replicas = []
        for i, (node, view) in enumerate(zip(self._replicas, self.views(), strict=True)):
            replicas.append(
                {
                    "index": i,
                    "healthy": view.healthy,
                    "lag_bytes": view.lag_bytes,
                    "replay_lsn": None if node.lsn is None else format_lsn(node.lsn),
                    "error": node.error,
                    "probes": node.probes,
                    "probe_failures": node.failures,
                }
            )
        return {
            "max_lag_bytes": self.max_lag_bytes,
            "interval": self.interval,
            "primary": {
                "healthy": is_healthy(primary.ok, primary.last_ok, now, self.stale_after),
                "lsn": None if primary.lsn is None else format_lsn(primary.lsn),
                "error": primary.error,
            },
            "replicas": replicas,
            "counters": {
                "picks": self.picks,
                "fallbacks": self.fallbacks,
                "lsn_waits": self.lsn_waits,
                "lsn_wait_misses": self.lsn_wait_misses,
            },
        }
