"""Private servers for tests: each on a free 127.0.0.1 port, stopped by pid."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def wait_until(predicate: Callable[[], bool], seconds: float, failure: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        time.sleep(0.05)


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
