"""Fixtures of the e2e tests: nodes started as `python run.py` and always stopped by pid."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from e2e_harness import NodeProcess, free_port


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Writes a TOML config into tmp_path and returns its path."""

    def write(text: str, name: str = "node.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Starts `python run.py ARGS --port <free>` and waits for /health; stops them all after."""
    nodes: list[NodeProcess] = []

    def start(
        *args: str,
        port: int | None = None,
        add_port: bool = True,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        wait: bool = True,
    ) -> NodeProcess:
        port = port or free_port()
        argv = [*args, "--port", str(port)] if add_port else list(args)
        # Each node runs in a directory of its own: what it writes (the embedded store's
        # files under ./data) stays out of the repository and out of other tests' way.
        workdir = tmp_path / f"node{len(nodes)}"
        node = NodeProcess(argv, port, workdir, env or {}, cwd or workdir)
        nodes.append(node)
        if wait:
            node.wait_healthy()
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client without a connection cap, for concurrent bursts against the nodes."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as made:
        yield made
