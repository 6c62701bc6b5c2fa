"""Fresh databases on the machine's PostgreSQL (127.0.0.1:5432, user postgres, trust), each
dropped after its test. Synchronous, so any fixture scope can use them; from a running event
loop call create_database / drop_database through asyncio.to_thread."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg

SERVER = "postgresql://postgres@127.0.0.1:5432"
ADMIN_DSN = f"{SERVER}/postgres"
CONNECT_TIMEOUT = 10.0


def new_database_name() -> str:
    return f"sn_test_{secrets.token_hex(6)}"


def database_dsn(name: str) -> str:
    return f"{SERVER}/{name}"


def create_database(name: str, *, icu_locale: str | None = None) -> None:
    """`icu_locale` (e.g. "en-US"): the database's default collation, in place of the
    server's (here C.UTF-8, which already orders by code point)."""
    options = ""
    if icu_locale is not None:
        options = f" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'"
    admin(f"CREATE DATABASE {quote(name)}{options}")


def drop_database(name: str) -> None:
    """Drop it, ending the sessions still connected (a pool not yet closed)."""
    admin(f"DROP DATABASE IF EXISTS {quote(name)} WITH (FORCE)")


@contextlib.contextmanager
def fresh_database(*, icu_locale: str | None = None) -> Iterator[str]:
    """A new empty database for the block; its DSN."""
    name = new_database_name()
    create_database(name, icu_locale=icu_locale)
    try:
        yield database_dsn(name)
    finally:
        drop_database(name)


def admin(statement: str) -> None:
    """Run `statement` as postgres in the postgres database, in a thread of its own (with
    an event loop of its own), so it works whether or not the caller's loop is running."""

    async def run() -> None:
        connection = await asyncpg.connect(ADMIN_DSN, timeout=CONNECT_TIMEOUT)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, run()).result()


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
