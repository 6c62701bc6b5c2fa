"""A private RabbitMQ node for tests that stop it: free ports, a temp dir, stopped by pid.

It ignores the machine's /etc/rabbitmq (which pins the shared node's name and port 5672)
and enables no plugins, so it boots in a few seconds. Stopped and started again, it keeps
its data dir: what it confirmed before is there after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from testkit.servers import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
BOOT_SECONDS = 30.0  # a cold boot takes ~2.5 s here; the margin is for a loaded machine
# The start of an AMQP 0-9-1 handshake; a booted node answers with a Connection.Start frame.
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


def rabbitmq_missing() -> str | None:
    """Why no private node can run here, or None."""
    if not os.access(SERVER, os.X_OK):
        return f"{SERVER} is not installed"
    if shutil.which("erl") is None:
        return "Erlang (erl) is not on PATH"
    return None


def answers_amqp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(PROTOCOL_HEADER)
            return sock.recv(1) == b"\x01"  # frame type 1: a method frame
    except OSError:
        return False


class RabbitServer:
    """`rabbitmq-server` in the foreground, in its own process group."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.dist_port = free_port()
        while self.dist_port == self.port:
            self.dist_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        (workdir / "home").mkdir(parents=True, exist_ok=True)
        for empty in ("rabbitmq-env.conf", "rabbitmq.conf", "enabled_plugins"):
            (workdir / empty).write_text("")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def environment(self) -> dict[str, str]:
        workdir = self.workdir
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin"),
            "HOME": str(workdir / "home"),  # its own Erlang cookie
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_NODENAME": f"sntest{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
        }

    def start(self) -> float:
        """Boot it (again: same ports, same data); the seconds it took."""
        began = time.monotonic()
        with (self.workdir / "server.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [SERVER],
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: kill() reaches beam.smp too
            )
        while not answers_amqp(self.port):
            if self.proc.poll() is not None or time.monotonic() - began > BOOT_SECONDS:
                self.kill()
                tail = (self.workdir / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the private RabbitMQ did not boot:\n{tail}")
            time.sleep(0.05)
        return time.monotonic() - began

    def stop(self, timeout: float = 30.0) -> float:
        """A clean shutdown (SIGTERM: the script stops the node, which closes its client
        connections first); the seconds it took."""
        began = time.monotonic()
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):  # kill() below ends it
                self.proc.wait(timeout=timeout)
        self.kill()
        return time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL the node's process group: a crash, no clean shutdown. (RabbitMQ 3.10
        loses a quorum queue declared minutes before a crash: Ra's name registry is saved
        lazily. stop() is what tests of a restart use.)"""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # beam.smp is the wrapper script's child: wait until its listener is gone too.
        deadline = time.monotonic() + 10
        while answers_amqp(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
