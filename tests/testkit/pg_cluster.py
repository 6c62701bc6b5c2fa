"""A private PostgreSQL 15 primary plus N hot-standby replicas for tests, without Docker.

Each server listens on a free 127.0.0.1 port, with its data dir and its unix socket in one
`mkdtemp` dir owned by `postgres` (pytest's tmp_path is under a 0700 folder that user cannot
enter). As root, initdb / pg_ctl / pg_basebackup run as `postgres` (they refuse root).
The primary has `wal_level=logical` (a later rebalance can decode it) and `fsync=off`; each
replica is `pg_basebackup -R -X stream -c fast -C -S replica_<i>` of it, so it streams
through its own physical slot. Only the servers this object started are ever stopped, by
their data dirs (`pg_ctl stop -m fast`) or, failing that, by the pid in their postmaster.pid.

`pg_cluster` is a session-scoped fixture: one primary and two replicas for the session.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"
# Appended to the primary's postgresql.conf; pg_basebackup copies it to every replica.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "logical",
    "fsync": "off",
    "shared_buffers": "'32MB'",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    # A replica whose primary went away retries every 5 s by default; tests restart the primary.
    "wal_retrieve_retry_interval": "'200ms'",
    "wal_receiver_status_interval": "'1s'",
}
NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def postgres_missing() -> str | None:
    """Why no private cluster can run here, or None."""
    for tool in ("initdb", "pg_ctl", "pg_basebackup", "psql"):
        if not os.access(BIN / tool, os.X_OK):
            return f"{BIN / tool} is not installed"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(USER)
        except KeyError:
            return f"running as root needs a {USER!r} user to run the servers"
    return None


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free unless someone races for it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgClusterError(RuntimeError):
    pass


class PgCluster:
    """One primary and `replicas` streaming hot standbys; see the module docstring."""

    def __init__(self, replicas: int = 2, *, bin_dir: Path = BIN) -> None:
        self.bin = bin_dir
        self.replica_count = replicas
        self.root: Path | None = None
        self.primary_port = 0
        self.replica_ports: list[int] = []
        self._running: set[Path] = set()

    # -- paths and addresses ---------------------------------------------------------------

    @property
    def primary_dir(self) -> Path:
        return self._root / "primary"

    def replica_dir(self, i: int) -> Path:
        self._check_index(i)
        return self._root / f"replica{i}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.primary_port}/{database}"

    def replica_dsn(self, i: int, database: str = "postgres") -> str:
        self._check_index(i)
        return f"postgresql://{USER}@127.0.0.1:{self.replica_ports[i]}/{database}"

    def replica_dsns(self, database: str = "postgres") -> list[str]:
        return [self.replica_dsn(i, database) for i in range(self.replica_count)]

    @property
    def _root(self) -> Path:
        if self.root is None:
            raise PgClusterError("the cluster is not started")
        return self.root

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.replica_count:
            raise IndexError(f"replica {i} of {self.replica_count}")

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """initdb the primary, start it, clone and start every replica; ~1-2 s."""
        missing = postgres_missing()
        if missing:
            raise PgClusterError(missing)
        if self.root is not None:
            raise PgClusterError("already started")
        self.root = Path(tempfile.mkdtemp(prefix="scalenode-pg-"))
        try:
            self._chown(self.root)
            self._as_postgres(
                "initdb", "-D", self.primary_dir, "-U", USER, "-A", "trust", "--no-sync",
                "-E", "UTF8", "--locale=C", "--no-instructions",
            )  # fmt: skip
            lines = [f"{key} = {value}" for key, value in SETTINGS.items()]
            lines.append(f"unix_socket_directories = '{self.root}'")
            with (self.primary_dir / "postgresql.conf").open("a") as conf:
                conf.write("\n# scalenode tests\n" + "\n".join(lines) + "\n")
            self.primary_port = self._start_fresh(self.primary_dir)
            for i in range(self.replica_count):
                self._as_postgres(
                    "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary_port), "-U", USER,
                    "-D", self.replica_dir(i), "-R", "-X", "stream", "-c", "fast",
                    "-C", "-S", f"replica_{i}", "--no-sync",
                )  # fmt: skip
                self.replica_ports.append(self._start_fresh(self.replica_dir(i)))
            self.wait_streaming()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the replicas, then the primary (`-m fast`), then remove the temp dir."""
        if self.root is None:
            return
        try:
            for i in range(len(self.replica_ports)):
                self._stop(self.replica_dir(i))
            self._stop(self.primary_dir)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self._running.clear()
            self.root = None
            self.replica_ports = []
            self.primary_port = 0

    def stop_replica(self, i: int) -> None:
        self._stop(self.replica_dir(i))

    def start_replica(self, i: int) -> None:
        self._start(self.replica_dir(i), self.replica_ports[i])

    def stop_primary(self) -> None:
        self._stop(self.primary_dir)

    def start_primary(self, *, wait_streaming: bool = True) -> None:
        """Start the primary again; by default wait until every running replica streams."""
        self._start(self.primary_dir, self.primary_port)
        if wait_streaming:
            self.wait_streaming()

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- SQL helpers (psql, synchronous) ---------------------------------------------------

    def psql(self, port: int, *commands: str, database: str = "postgres") -> str:
        """Run each command as its own statement (so ALTER SYSTEM works); unaligned output."""
        args = [str(self.bin / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1"]
        args += ["-h", "127.0.0.1", "-p", str(port), "-U", USER, "-d", database]
        for command in commands:
            args += ["-c", command]
        env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
        done = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)
        if done.returncode != 0:
            raise PgClusterError(f"psql on port {port} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str, *, wait: bool = True) -> None:
        """CREATE DATABASE on the primary; by default wait until every replica replayed it."""
        if not NAME.match(name):
            raise ValueError(f"a plain lower-case identifier, got {name!r}")
        self.psql(self.primary_port, f"CREATE DATABASE {name}")
        if wait:
            self.wait_caught_up()

    def set_apply_delay(self, i: int, seconds: float) -> None:
        """recovery_min_apply_delay on replica i (0 turns it off), reloaded before this returns.

        The delay holds back commit records only: WAL before a transaction's commit is
        replayed at once, so the byte lag it makes is the WAL written after the first
        delayed commit.
        """
        port = self.replica_ports[i]
        value = f"{round(seconds * 1000)}ms"
        self.psql(
            port,
            f"ALTER SYSTEM SET recovery_min_apply_delay = '{value}'",
            "SELECT pg_reload_conf()",
        )
        # pg_reload_conf only signals the postmaster: wait until new sessions see the value.
        want = self.psql(port, f"SELECT '{value}'::interval")
        deadline = time.monotonic() + 5
        while (
            self.psql(port, "SELECT current_setting('recovery_min_apply_delay')::interval") != want
        ):
            if time.monotonic() > deadline:
                raise PgClusterError(f"replica {i} never reloaded recovery_min_apply_delay")
            time.sleep(0.02)

    def wait_streaming(self, seconds: float = 15.0) -> None:
        """Until every running replica streams from the primary (pg_stat_replication)."""
        slots = [
            f"'replica_{i}'"
            for i in range(len(self.replica_ports))
            if self.replica_dir(i) in self._running
        ]
        if not slots:
            return
        query = (
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s "
            "ON s.active_pid = r.pid WHERE r.state = 'streaming' "
            f"AND s.slot_name IN ({', '.join(slots)})"
        )
        self._poll(lambda: self.psql(self.primary_port, query) == str(len(slots)), seconds)

    def wait_caught_up(self, seconds: float = 15.0) -> None:
        """Until every running replica replayed the primary's current WAL position."""
        target = self.psql(self.primary_port, "SELECT pg_current_wal_lsn()")
        for i in range(len(self.replica_ports)):
            if self.replica_dir(i) not in self._running:
                continue
            port = self.replica_ports[i]
            query = f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
            self._poll(lambda p=port, q=query: self.psql(p, q) == "t", seconds)

    # -- internals ------------------------------------------------------------------------

    def _poll(self, done: Any, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                raise PgClusterError(f"timed out after {seconds} s")
            time.sleep(0.02)

    def _as_postgres(self, tool: str, *args: object, check: bool = True) -> int:
        command = [str(self.bin / tool), *map(str, args)]
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            kwargs = {"user": USER, "group": USER, "extra_groups": []}
        done = subprocess.run(
            command, cwd=self._root, capture_output=True, text=True, timeout=120, **kwargs
        )
        if check and done.returncode != 0:
            raise PgClusterError(
                f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
            )
        return done.returncode

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, USER, USER)

    def _log(self, datadir: Path) -> Path:
        return self._root / f"{datadir.name}.log"

    def _start_fresh(self, datadir: Path) -> int:
        """Start on a free port, trying another if someone took it meanwhile."""
        for attempt in range(5):
            port = free_port()
            try:
                self._start(datadir, port)
                return port
            except PgClusterError:
                log = self._log(datadir).read_text(errors="replace")
                taken = "could not bind" in log or "already in use" in log
                if not taken or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _start(self, datadir: Path, port: int) -> None:
        if datadir in self._running:
            return
        code = self._as_postgres(
            "pg_ctl", "-D", datadir, "-l", self._log(datadir), "-o", f"-p {port}",
            "-w", "-t", "60", "start", check=False,
        )  # fmt: skip
        if code != 0:
            self._kill(datadir)  # a half-started postmaster is still ours
            tail = self._log(datadir).read_text(errors="replace")[-2000:]
            raise PgClusterError(f"pg_ctl start {datadir.name} failed:\n{tail}")
        self._running.add(datadir)

    def _stop(self, datadir: Path) -> None:
        if datadir not in self._running:
            return
        code = self._as_postgres(
            "pg_ctl", "-D", datadir, "-m", "fast", "-w", "-t", "30", "stop", check=False
        )
        if code != 0:
            self._kill(datadir)
        self._running.discard(datadir)

    def _kill(self, datadir: Path) -> None:
        """SIGQUIT (immediate shutdown) the postmaster of `datadir`, if it is still there."""
        pid = self._pid(datadir)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while self._pid(datadir) == pid and time.monotonic() < deadline:
            time.sleep(0.05)

    @staticmethod
    def _pid(datadir: Path) -> int | None:
        """The live postmaster pid of `datadir` (checked against /proc), or None."""
        try:
            pid = int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(datadir).encode() in cmdline else None


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL 15 primary and two streaming replicas for the session."""
    missing = postgres_missing()
    if missing:
        pytest.fail(missing)  # CI installs PostgreSQL: a missing server is a failure
    cluster = PgCluster(replicas=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
