"""A document shard member that is down, silent, late or unopenable (plugins/shard): start
returns, calls fail fast with ShardUnavailable within the timeout, a down member is tried
at most once a second and logged once without its password, and one that comes back is
used again without a restart."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from testkit.postgres import create_database, database_dsn, drop_database, new_database_name
from testkit.servers import closed_port

from plugins.shard import postgres
from plugins.shard.documents import ShardUnavailable
from plugins.shard.postgres import PostgresShard
from plugins.shard.sqlite import SqliteShard


async def test_a_down_member_starts_and_fails_fast() -> None:
    """Nothing listening: start returns, and each call raises ShardUnavailable at once."""
    timeout = 1.0
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/x"
    shard = PostgresShard("down", dsn, table="d", timeout=timeout)
    calls = [
        lambda: shard.get(1, "a"),
        lambda: shard.put(1, "a", b"{}"),
        lambda: shard.scan([1], after=None, prefix=None, limit=10),
    ]
    try:
        began = time.monotonic()
        await shard.start()
        assert time.monotonic() - began < timeout + 0.5
        for call in calls:
            began = time.monotonic()
            with pytest.raises(ShardUnavailable):
                await call()
            assert time.monotonic() - began < timeout + 0.5
        assert shard.pool_stats() == {"size": 0, "in_use": 0, "max": 10}
    finally:
        await shard.close()


async def test_a_member_that_never_answers_is_bounded_by_the_timeout() -> None:
    """A server that accepts and stays silent: start and calls end after `timeout`."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshakes; nobody ever reads
        dsn = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/x"
        starting, calling = (PostgresShard(n, dsn, table="d", timeout=0.5) for n in "ab")
        try:
            began = time.monotonic()
            await starting.start()
            assert time.monotonic() - began < 1.0
            began = time.monotonic()
            with pytest.raises(ShardUnavailable) as raised:
                await calling.get(1, "a")
            assert time.monotonic() - began < 1.0
            assert isinstance(raised.value.__cause__, TimeoutError)
        finally:
            await starting.close()
            await calling.close()


async def test_a_down_member_is_tried_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a member is down, calls within a second of the last attempt make no pool."""
    attempts = 0
    create_pool = asyncpg.create_pool

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal attempts
        attempts += 1
        return create_pool(*args, **kwargs)

    monkeypatch.setattr(asyncpg, "create_pool", counting)
    shard = PostgresShard("down", f"postgresql://postgres@127.0.0.1:{closed_port()}/x", table="d")
    try:
        await shard.start()
        for _ in range(5):
            with pytest.raises(ShardUnavailable):
                await shard.get(1, "a")
        assert attempts == 1
        await asyncio.sleep(postgres.RECONNECT_INTERVAL)
        with pytest.raises(ShardUnavailable):
            await shard.get(1, "a")
        assert attempts == 2
    finally:
        await shard.close()


async def test_a_member_that_comes_back_is_used_again() -> None:
    """A member whose database appears after start serves calls, without a restart."""
    name = new_database_name()
    shard = PostgresShard("late", database_dsn(name), table="docs", timeout=1.0)
    try:
        await shard.start()
        with pytest.raises(ShardUnavailable):
            await shard.get(1, "a")
        await asyncio.to_thread(create_database, name)
        deadline = time.monotonic() + postgres.RECONNECT_INTERVAL + 2.0
        while True:
            try:
                await shard.seed_states({1: "owned"})
                written = await shard.put(1, "a", b'{"v": 1}')
                break
            except ShardUnavailable:
                assert time.monotonic() < deadline, "the member was never used again"
                await asyncio.sleep(0.05)
        assert written.created
        assert await shard.get(1, "a") == written.document
    finally:
        await shard.close()
        await asyncio.to_thread(drop_database, name)


async def test_a_down_member_is_logged_once_without_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One warning names the member, with the DSN's password masked."""
    dsn = f"postgresql://postgres:s3cret@127.0.0.1:{closed_port()}/x"
    shard = PostgresShard("down", dsn, table="d")
    with caplog.at_level(logging.WARNING, logger="scalenode.shard"):
        await shard.start()
        for _ in range(3):
            with pytest.raises(ShardUnavailable) as raised:
                await shard.get(1, "a")
            assert "s3cret" not in str(raised.value)
    await shard.close()
    records = [r for r in caplog.records if r.name == "scalenode.shard"]
    assert len(records) == 1
    assert "s3cret" not in caplog.text
    assert "postgres:***@127.0.0.1" in records[0].getMessage()


async def test_an_sqlite_file_that_cannot_be_opened_fails_its_calls(tmp_path: Path) -> None:
    """A file that cannot be made: start returns, calls raise ShardUnavailable."""
    (tmp_path / "taken").write_text("a file, not a directory")
    shard = SqliteShard("lite", tmp_path / "taken" / "s0.sqlite3", table="sn_docs_t")
    await shard.start()
    try:
        with pytest.raises(ShardUnavailable):
            await shard.get(1, "a")
    finally:
        await shard.close()
