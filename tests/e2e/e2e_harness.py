"""Helpers for the e2e tests: free ports, `python run.py` subprocesses, fresh-connection HTTP."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parents[1]
RUN_PY = REPO / "run.py"
START_TIMEOUT = 10.0  # seconds for a node to answer /health


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a node subprocess: no stray SCALENODE__ vars, slow_app importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALENODE__")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(E2E_DIR), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    # No balancer watches a test's node: SIGTERM stops it without the drain's announcement
    # (tests of the drain set their own through extra).
    env["SCALENODE__NODE__DRAIN_DELAY"] = "0"
    env.update(extra or {})
    return env


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, path: str, method: str = "GET", timeout: float = 5.0) -> Response:
    """One request on a new connection (so SO_REUSEPORT may pick another process)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return Response(resp.status, headers, body)
    finally:
        conn.close()


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def in_flight(port: int, route: str) -> float:
    """The node's scalenode_requests_in_flight gauge for `route` (0 when absent)."""
    text = request(port, "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith("scalenode_requests_in_flight{") and f'route="{route}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def run_cli(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 15.0,
) -> subprocess.CompletedProcess[str]:
    """`python run.py ARGS` to completion (check-config, bad configs, failed starts), by
    default in a directory of its own: what a start writes (./data) stays out of the repo."""
    with tempfile.TemporaryDirectory(prefix="scalenode-cli-") as workdir:
        return subprocess.run(
            [sys.executable, str(RUN_PY), *args],
            cwd=cwd or workdir,
            env=node_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) from /proc, or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rpartition(")")[2].split()
    return fields[0], int(fields[1]), int(fields[2])


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live processes in the process group `pgid` (a node started in its own session)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[2] == pgid and stat[0] != "Z":
                members.append(int(entry.name))
    return members


class NodeProcess:
    """`python run.py ARGS` in its own session, output in files; `stop()` always cleans up."""

    def __init__(
        self, args: list[str], port: int, log_dir: Path, env: dict[str, str], cwd: Path
    ) -> None:
        self.args = args
        self.port = port
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / "stdout.log"
        self.stderr_path = log_dir / "stderr.log"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(RUN_PY), *args],
                cwd=cwd,
                env=node_env(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its pgid is its pid: children are findable
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"node exited with {code} before /health:\n{self.stderr()}")
            try:
                resp = request(self.port, "/health", timeout=1.0)
                if resp.status == 200:
                    return resp.json()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no /health on port {self.port} in {timeout} s")
            time.sleep(0.05)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit status (raises subprocess.TimeoutExpired)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=8.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # A supervisor's children outliving it (a bug) are still in its process group.
        for pid in group_members(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
