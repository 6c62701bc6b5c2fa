"""`--processes N`: a supervisor and N children sharing one port through SO_REUSEPORT."""

from __future__ import annotations

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from e2e_harness import alive, group_members, proc_stat, request, run_cli


def health_pids(port: int, want: int, timeout: float = 10.0) -> dict[int, str]:
    """pid → node name from /health calls, each on a new connection, until `want` pids answered.

    /health answers as soon as the first child listens; the others may still be starting.
    """
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        body = request(port, "/health").json()
        seen[body["pid"]] = body["node"]
    return seen


def test_processes_share_port_restart_and_stop(start_node) -> None:
    """Two children answer on one port; a killed child is restarted; SIGTERM stops them all."""
    supervisor = start_node("--processes", "2", "--name", "a")
    port = supervisor.port

    seen = health_pids(port, want=2)
    assert len(seen) == 2, f"only {seen} answered in 10 s"
    assert sorted(seen.values()) == ["a#0", "a#1"]
    for pid in seen:
        stat = proc_stat(pid)
        assert stat is not None and stat[1] == supervisor.pid, "not a child of the supervisor"
    assert supervisor.pid not in seen

    # Kill -9 one child: the port keeps answering, and a new child takes its name.
    victim, victim_name = next(iter(seen.items()))
    survivor = next(pid for pid in seen if pid != victim)
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.1)  # the kernel closes the victim's socket as it exits
    failures = 0
    replacement: dict[int, str] = {}
    deadline = time.monotonic() + 10.0
    while not replacement and time.monotonic() < deadline:
        try:
            body = request(port, "/health", timeout=2.0).json()
        except OSError:
            failures += 1
            continue
        if body["pid"] not in seen:
            replacement[body["pid"]] = body["node"]
    assert replacement, "no restarted child answered within 10 s"
    assert failures == 0, f"{failures} requests failed while a child was down"
    assert list(replacement.values()) == [victim_name]
    assert not alive(victim)
    assert alive(survivor)

    # SIGTERM to the parent: every child drains, the parent exits 0, nothing is left.
    children = [survivor, *replacement]
    assert supervisor.terminate(timeout=20.0) == 0
    for pid in children:
        assert not alive(pid), f"child {pid} outlived its supervisor"
    assert group_members(supervisor.pid) == []
    assert "Traceback" not in supervisor.stderr()


def test_processes_check_config_spawns_nothing() -> None:
    """--check-config with --processes validates and exits 0 without starting children."""
    result = run_cli(["--check-config", "--processes", "3", "--name", "a"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config ok: node a on ")


def test_processes_sigterm_drains_children(start_node, write_config) -> None:
    """SIGTERM to the parent lets a child's in-flight 2 s request finish; then exit 0."""
    config = write_config(
        '[node]\nname = "p"\ndrain_timeout = 5\n\n'
        '[[routes]]\npath = "/slow"\ntarget = "handler:slow_app:slow"\n'
    )
    supervisor = start_node("--processes", "2", "--config", str(config))
    children = list(health_pids(supervisor.port, want=2))
    assert len(children) == 2
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(request, supervisor.port, "/slow?seconds=2", timeout=10.0)
        time.sleep(0.5)  # the request is in flight in one of the children
        assert not slow.done()
        supervisor.proc.send_signal(signal.SIGTERM)
        response = slow.result(timeout=10.0)
    assert response.status == 200
    assert response.json() == {"slept": 2.0}
    assert response.headers["x-node"] in ("p#0", "p#1")
    assert supervisor.proc.wait(timeout=10.0) == 0
    for pid in children:
        assert not alive(pid), f"child {pid} outlived its supervisor"
    assert group_members(supervisor.pid) == []


def test_processes_port_in_use_gives_up() -> None:
    """A port held without SO_REUSEPORT: exit 1 at once with one line, no child started."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        result = run_cli(["--processes", "2", "--port", str(port)], timeout=30)
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 5.0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
