"""PostgreSQL plumbing for store_bench.py: a throw-away database, VACUUM between runs, and
the server processes (backends) that serve one of our processes' connections.

A backend is found by its client's port: the local ports of the sockets the process holds
(/proc/PID/fd, /proc/net/tcp) are pg_stat_activity.client_port of its backends. Nothing
here ends a backend; the database is dropped WITH (FORCE) once our servers are stopped.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from harness import BenchError

T = TypeVar("T")


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _execute(dsn: str, *statements: str) -> None:
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"cannot connect to PostgreSQL at {dsn}: {exc}") from None
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def create_database(admin_dsn: str) -> str:
    """A new, empty database; its name."""
    name = f"scalenode_store_bench_{secrets.token_hex(4)}"
    _run(_execute(admin_dsn, f'CREATE DATABASE "{name}"'))
    return name


def drop_database(admin_dsn: str, name: str) -> None:
    _run(_execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def vacuum(dsn: str, table: str) -> None:
    """The machine's autovacuum may be off: clear the previous PUT runs' dead rows."""
    _run(_execute(dsn, f'VACUUM (ANALYZE) "{table}"'))


async def _fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def settings(dsn: str, names: tuple[str, ...]) -> dict[str, str]:
    rows = _run(_fetch(dsn, "SELECT name, setting FROM pg_settings WHERE name = ANY($1)", names))
    return {row["name"]: row["setting"] for row in rows}


def local_ports(pid: int, remote_port: int) -> set[int]:
    """Local ports of `pid`'s TCP sockets connected to `remote_port` (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def backends_of(dsn: str, database: str, pid: int) -> list[int]:
    """Pids of the backends serving `pid`'s connections to `database` (the server must be
    on this machine: the benchmark reads their CPU time and pins them)."""
    port = urlsplit(dsn).port or 5432
    ports = local_ports(pid, port)
    if not ports:
        return []
    rows = _run(
        _fetch(
            dsn,
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND client_port = ANY($2)",
            database,
            sorted(ports),
        )
    )
    return [row["pid"] for row in rows]


def pin(pids: list[int], cpu: int) -> list[int]:
    """Pin the backends to `cpu` (as run.py pins its private Redis with the load): the
    system under test's CPU then measures it, not the database. Returns those pinned."""
    pinned = []
    for pid in pids:
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError:
            continue
        pinned.append(pid)
    return pinned
