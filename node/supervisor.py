"""`--processes N`: N node processes sharing one port through SO_REUSEPORT, under one parent.

The parent restarts a child that dies, forwards SIGTERM/SIGINT so every child drains,
and gives up (exit 1) when children keep dying right after start (a port held by a
process without SO_REUSEPORT, say) instead of restarting them forever.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

log = logging.getLogger("scalenode.supervisor")

EARLY_DEATH_SECONDS = 2.0  # a child dying sooner than this counts as failing to start
MAX_EARLY_DEATHS = 5  # in a row by one child before the parent gives up
POLL_SECONDS = 0.1


class Child:
    def __init__(self, index: int, argv: list[str]) -> None:
        self.index = index
        self.argv = argv
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restart_at = 0.0
        self.early_deaths = 0  # in a row

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv)
        self.started = time.monotonic()
        log.info("child %d started (pid %d)", self.index, self.process.pid)


def supervise(child_argv: Sequence[str], processes: int, drain_timeout: float) -> int:
    """Run `processes` children of `child_argv + ["--child", i]` until told to stop."""
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    children = [Child(i, [*child_argv, "--child", str(i)]) for i in range(processes)]
    for child in children:
        child.start()
    while not stopping:
        time.sleep(POLL_SECONDS)
        now = time.monotonic()
        for child in children:
            if child.process is None:
                if now >= child.restart_at and not stopping:
                    child.start()
                continue
            code = child.process.poll()
            if code is None:
                continue
            died_early = now - child.started < EARLY_DEATH_SECONDS
            child.early_deaths = child.early_deaths + 1 if died_early else 0
            if child.early_deaths >= MAX_EARLY_DEATHS:
                log.error("children keep dying at start (last exit status %s); giving up", code)
                stop_children(children, drain_timeout)
                return 1
            delay = min(0.25 * 2**child.early_deaths, 5.0)
            log.warning(
                "child %d (pid %d) exited with %s; restarting in %.2g s",
                child.index,
                child.process.pid,
                code,
                delay,
            )
            child.process = None
            child.restart_at = now + delay
    stop_children(children, drain_timeout)
    return 0


def stop_children(children: list[Child], drain_timeout: float) -> None:
    running = [c.process for c in children if c.process is not None and c.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + drain_timeout + 5.0  # the drain, plus time to close pools
    for process in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.error("child pid %d did not stop in time; killing it", process.pid)
            process.kill()
            process.wait()


def can_share_port(host: str, port: int) -> str | None:
    """Why the children could not bind host:port with SO_REUSEPORT, or None if they can."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return exc.strerror or str(exc)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def child_command(argv: Sequence[str]) -> list[str]:
    """This process's command line, as a child: the same flags without --processes."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            args.append(arg)
    return [sys.executable, "-m", "node", *args]
