"""Fixtures every test folder may use."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from testkit.origin import CountingOrigin
from testkit.pg_cluster import pg_cluster  # noqa: F401  (a session fixture: 1 primary, 2 replicas)
from testkit.servers import RedisServer, free_port, redis_cli, start_redis, stop, wait_until


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free port, for tests that kill it or need it empty."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    """A 3-master Redis Cluster on free ports, for the session; its URL."""
    workdir = Path(tempfile.mkdtemp(prefix="scalenode-cluster-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        for _ in range(3):
            ports.append(free_port())
            conf = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{ports[-1]}.conf"]
            processes.append(start_redis(ports[-1], workdir, *conf))
        nodes = [f"127.0.0.1:{port}" for port in ports]
        create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0"]
        subprocess.run([*create, "--cluster-yes"], check=True, capture_output=True, timeout=60)
        ok = lambda: all("cluster_state:ok" in redis_cli(p, "cluster", "info") for p in ports)  # noqa: E731
        wait_until(ok, 30, "the cluster never reached cluster_state:ok")
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def origin() -> AsyncIterator[CountingOrigin]:
    """An origin server that counts what it is asked (see testkit.origin)."""
    made = CountingOrigin()
    await made.start()
    yield made
    await made.stop()
