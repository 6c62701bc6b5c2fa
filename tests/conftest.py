"""Fixtures every test folder may use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from testkit.origin import CountingOrigin
from testkit.servers import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free port, for tests that kill it or need it empty."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def origin() -> AsyncIterator[CountingOrigin]:
    """An origin server that counts what it is asked (see testkit.origin)."""
    made = CountingOrigin()
    await made.start()
    yield made
    await made.stop()
