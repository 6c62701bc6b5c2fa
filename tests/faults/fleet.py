"""The processes a fault test kills and restarts: upstream members (member.py) and nodes
(`python run.py`), each on a free 127.0.0.1 port, in its own session, stopped by pid."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.e2e_harness import NodeProcess, free_port, request

MEMBER_PY = Path(__file__).resolve().parent / "member.py"
Figures = list[tuple[str, Any]]  # what a test measured, by name (see conftest.figures)
START_TIMEOUT = 10.0  # seconds for a member or a node to answer (the e2e harness's figure)
STOP_TIMEOUT = 5.0  # seconds a node gets to drain after SIGINT


@dataclass
class Member:
    """One upstream member process; `kill()` and `start()` again keep its port."""

    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, str(MEMBER_PY), str(self.port), self.name]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError):
                if request(self.port, "/health", timeout=0.5).status == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"member {self.name} did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no goodbye, connections reset."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)


@dataclass
class Fleet:
    """Everything one test started; `stop()` ends each by its pid."""

    workdir: Path
    members: list[Member] = field(default_factory=list)
    nodes: list[NodeProcess] = field(default_factory=list)

    def member(self, name: str) -> Member:
        made = Member(name, free_port(), self.workdir / f"member-{name}.log")
        self.members.append(made)
        made.start()
        return made

    def node(self, name: str, config: str, port: int | None = None) -> NodeProcess:
        """`python run.py` on `config` (TOML), answering /health before this returns;
        `port` again restarts a node where it was."""
        directory = self.workdir / f"node-{name}-{len(self.nodes)}"
        directory.mkdir()
        path = directory / "node.toml"
        path.write_text(config)
        port = port or free_port()
        made = NodeProcess(
            ["--config", str(path), "--port", str(port)], port, directory, {}, directory
        )
        self.nodes.append(made)
        made.wait_healthy(START_TIMEOUT)
        return made

    def stop(self) -> None:
        for node in self.nodes:
            stop_node(node)
        for member in self.members:
            member.kill()


def stop_node(node: NodeProcess) -> None:
    """SIGINT, which drains without the SIGTERM drain delay a load balancer needs, then the
    harness's stop (SIGTERM, SIGKILL, and anything left in the node's process group)."""
    if node.proc.poll() is None:
        node.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.proc.wait(timeout=STOP_TIMEOUT)
    node.stop()


def node_config(
    name: str,
    members: list[Member],
    *,
    redis: str = "",
    route: str = "",
    pool: str = "",
    dashboard_interval: float = 1.0,
) -> str:
    """A node proxying /api/... to `members` (pool `app`); `route` and `pool` are extra
    TOML keys of the route and of the pool."""
    targets = ", ".join(f'"{member.url}"' for member in members)
    return f"""
[node]
name = "{name}"
drain_timeout = 1.0

[backends]
redis = "{redis}"

[dashboard]
interval = {dashboard_interval}

[upstreams.app]
targets = [{targets}]
timeout = 2.0
{pool}

[[routes]]
path = "/api/{{tail:.*}}"
target = "upstream:app"
strip_prefix = "/api"
{route}
"""
