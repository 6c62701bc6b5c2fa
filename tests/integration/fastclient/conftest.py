from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from .upstreams import Answer, RawServer, Serve


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts raw upstreams on free ports; closes them afterwards."""
    servers: list[RawServer] = []

    async def start(answer: Answer) -> RawServer:
        raw = RawServer(answer)
        raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        servers.append(raw)
        return raw

    yield start
    for raw in servers:
        assert raw.server is not None
        raw.server.close()
