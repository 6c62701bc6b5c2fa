"""Reusable benchmark plumbing: tools, free ports, pinned processes, readiness, stop by pid.

Every process is started by `start()` and stopped by `stop()` with the pid `start()` got;
nothing is ever killed by name. `taskset -c CPU cmd` execs `cmd`, so the pid is the
server's own, and children (nginx workers) inherit the pinning.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class BenchError(RuntimeError):
    """A setup failure worth one clear line: a missing tool, a server that never answered."""


def require_tool(name: str) -> str:
    """The absolute path of `name` on PATH (or an absolute path given), else BenchError."""
    path = shutil.which(name)
    if path is None:
        raise BenchError(f"required tool {name!r} not found on PATH (install it first)")
    return path


def require_cpus(*cpus: int) -> None:
    available = os.sched_getaffinity(0)
    missing = [cpu for cpu in cpus if cpu not in available]
    if missing:
        raise BenchError(
            f"CPU(s) {missing} not available to this process (have {sorted(available)}); "
            "the benchmark pins the load generator and the system under test apart"
        )


_GIVEN: set[int] = set()  # ports handed out in this run, never handed out twice


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to 0, read it, close)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


@dataclass
class Process:
    """A process this harness started, pinned to `cpu`, its output in `log`."""

    name: str
    popen: subprocess.Popen[bytes]
    cpu: int | str
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def start(
    name: str,
    argv: Sequence[str],
    *,
    cpu: int | str,
    log_dir: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Process:
    """Start `argv` pinned to `cpu`, stdout and stderr into `log_dir/<name>.log`."""
    taskset = require_tool("taskset")
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        try:
            popen = subprocess.Popen(
                [taskset, "-c", str(cpu), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=None if env is None else dict(env),
                start_new_session=True,  # a Ctrl-C at the terminal reaches only the harness
            )
        except OSError as exc:
            raise BenchError(f"cannot start {name}: {exc}") from None
    return Process(name, popen, cpu, log)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc), e.g. an nginx master's worker."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def stop(proc: Process, timeout: float = 10.0) -> int | None:
    """SIGTERM the pid we started, SIGKILL it after `timeout`; reap leftover children by pid."""
    if proc.popen.poll() is not None:
        return proc.popen.returncode
    kids = children(proc.pid)
    proc.popen.send_signal(signal.SIGTERM)
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        proc.popen.wait(timeout)
    deadline = time.monotonic() + timeout
    for kid in kids:  # the parent normally takes its children down with it
        while _alive(kid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(kid):
            os.kill(kid, signal.SIGKILL)
    return proc.popen.returncode


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def fetch(url: str, timeout: float = 2.0) -> Answer:
    """GET `url`; any HTTP status is an answer (errors raise OSError)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return Answer(resp.status, resp.headers.get("Content-Type", ""), resp.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers.get("Content-Type", ""), exc.read())


def wait_ready(proc: Process, url: str, timeout: float = 20.0) -> Answer:
    """Poll `url` until it answers 200; fail early, with the log, if the process dies."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(
                f"{proc.name} exited with {proc.popen.returncode} before answering {url}:\n"
                f"{proc.log_tail()}"
            )
        try:
            answer = fetch(url, timeout=1.0)
        except OSError as exc:
            last = str(exc)
        else:
            if answer.status == 200:
                return answer
            last = f"HTTP {answer.status}: {answer.body[:200]!r}"
        time.sleep(0.05)
    raise BenchError(
        f"{proc.name} did not answer 200 on {url} within {timeout:g} s ({last}):\n{proc.log_tail()}"
    )


def wait_port(proc: Process, port: int, timeout: float = 20.0) -> None:
    """Wait until 127.0.0.1:`port` accepts connections (for servers that do not speak HTTP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive(proc)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{proc.name} did not listen on {port} within {timeout:g} s")


def check_alive(proc: Process) -> None:
    if proc.popen.poll() is not None:
        raise BenchError(f"{proc.name} died (exit {proc.popen.returncode}):\n{proc.log_tail()}")


def log_problems(proc: Process) -> list[str]:
    """Lines of a process's log that suggest trouble (errors, tracebacks, nginx alerts)."""
    text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
    marks = ("ERROR", "Traceback", "[error]", "[alert]", "[emerg]", "[crit]")
    return [f"{proc.name}: {line}" for line in text.splitlines() if any(m in line for m in marks)]
