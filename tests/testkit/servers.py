"""Private servers for tests: each on a free 127.0.0.1 port, stopped by pid."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis


def wait_until(predicate: Callable[[], bool], seconds: float, failure: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        time.sleep(0.05)


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, read, closed): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port() -> int:
    """A free port P whose Redis Cluster bus port P + 10000 is free too."""
    while True:
        port = random.randrange(20000, 30000)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def redis_cli(port: int, *args: str) -> str:
    command = ["redis-cli", "-p", str(port), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout


def start_redis(port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """redis-server in the foreground on `port`, answering PING before this returns."""
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--daemonize", "no", "--dir", str(workdir), *extra]
    process = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
    password = extra[extra.index("--requirepass") + 1] if "--requirepass" in extra else None
    auth = ("-a", password, "--no-auth-warning") if password else ()
    try:
        wait_until(
            lambda: redis_cli(port, *auth, "ping").strip() == "PONG", 10, f"no redis on {port}"
        )
    except BaseException:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=10)


NODES_INDEX = "sn:{nodes}:index"


class RedisServer:
    """A private `redis-server` on a free port, no persistence; killed and restarted at will."""

    def __init__(self, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("these tests need redis-server on PATH")
        self.binary = binary
        self.port = free_port()
        self.log_path = log_dir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 5.0) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
                    client.ping()
                return
            except (redis.RedisError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.log_path.read_text()
                    raise RuntimeError(f"redis-server did not start:\n{log}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its connections open but answers nothing (a hung host)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def live_nodes(self) -> int:
        with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
            return int(client.zcard(NODES_INDEX))
