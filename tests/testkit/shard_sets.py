"""Shard sets for the rebalance tests: members (SQLite files or fresh PostgreSQL databases,
dropped after), nodes serving a store route over them, the set a node holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from node.app import STATS, build_app
from node.config import Settings
from node.schema import build
from plugins.shard.members import ShardSet
from testkit.node_server import NodeServer
from testkit.postgres import create_database, database_dsn, drop_database, new_database_name


@contextlib.asynccontextmanager
async def members_of(kind: str, count: int) -> AsyncIterator[list[dict[str, str]]]:
    """`count` members s0..: embedded files, or fresh PostgreSQL databases."""
    if kind == "embedded":
        yield [{"name": f"s{i}", "dsn": ""} for i in range(count)]
        return
    names = [new_database_name() for _ in range(count)]
    for name in names:
        await asyncio.to_thread(create_database, name)
    try:
        yield [{"name": f"s{i}", "dsn": database_dsn(name)} for i, name in enumerate(names)]
    finally:
        for name in names:
            await asyncio.to_thread(drop_database, name)


def settings_for(
    members: list[dict[str, str]], data_dir: Path, redis: str = "", **options: Any
) -> Settings:
    data = {
        "node": {"name": "store-node"},
        "backends": {"redis": redis},
        "shards": {"users": {"members": members, "data_dir": str(data_dir), **options}},
        "routes": [
            {"path": "/users/{key}", "target": "store:users"},
            {"path": "/users", "target": "store:users", "methods": ["GET"]},
        ],
    }
    return build(Settings, data, "")


async def node_for(settings: Settings) -> TestClient:
    client = TestClient(NodeServer(build_app(settings, "gateway")))
    await client.start_server()
    return client


def set_of(client: TestClient) -> ShardSet:
    """The shard set a node's store routes share."""
    for _, reporter in client.app[STATS].plugins:
        if reporter.name == "store":
            return reporter.shard_set
    raise LookupError("no store route")
