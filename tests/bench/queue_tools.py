"""queue_bench.py's helpers: finding RabbitMQ's VM and its CPU time, running queue_load.py,
the Celery venv and sampling CPU time during a drain."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cpu
import harness
from harness import BenchError
from servers import BENCH_DIR

CELERY_VENV = Path("/tmp/qbench-celery")


def beam_pids() -> dict[str, int]:
    """The RabbitMQ server's Erlang VM, `beam.smp ... -s rabbit boot` (not ours: only read,
    for its CPU time per job; a rabbitmqctl is a beam.smp too, and is left out)."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() != "beam.smp":
                continue
            argv = (comm.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(argv[i : i + 3] == [b"-s", b"rabbit", b"boot"] for i in range(len(argv))):
            return {"rabbitmq": int(comm.parent.name)}
    return {}


def broker_seconds(usage: cpu.Usage) -> float | None:
    values = [v for k, v in usage.process_s.items() if k.startswith("rabbitmq")]
    return sum(values) if values else None


def run_client(argv: list[str], cpu_no: int, timeout: float, env: dict[str, str]) -> dict:
    """One queue_load.py run pinned to `cpu_no`; its JSON line."""
    taskset = harness.require_tool("taskset")
    done = subprocess.run(
        [taskset, "-c", str(cpu_no), sys.executable, str(BENCH_DIR / "queue_load.py"), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=BENCH_DIR,
        env=env,
    )
    if done.returncode != 0:
        raise BenchError(f"queue_load.py {argv[0]} exited {done.returncode}:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensure_celery(python: Path) -> Path:
    if python.exists():
        return python
    if python != CELERY_VENV / "bin" / "python":
        raise BenchError(f"--celery-python {python} does not exist")
    print(f"bench: creating {CELERY_VENV} with celery (once) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(CELERY_VENV)], check=True)
    pip = CELERY_VENV / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", "celery"], check=True)
    return python


class Trace:
    """CPU seconds of some processes, sampled as a drain goes (Unix time, as the jobs'
    `started` and `finished`), so that the CPU of the span that is timed can be read back
    without the worker's start-up (imports, connecting)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.sample()

    def sample(self) -> None:
        now = time.time()
        self.samples.append((now, {k: cpu.process_seconds(p) for k, p in self.pids.items()}))

    def at(self, when: float, prefix: str) -> float:
        """Interpolated CPU seconds, at `when`, of the processes whose name starts with
        `prefix`."""

        def total(values: dict[str, float]) -> float:
            return sum(v for k, v in values.items() if k.startswith(prefix))

        before = [(t, total(v)) for t, v in self.samples if t <= when]
        after = [(t, total(v)) for t, v in self.samples if t > when]
        if not before:
            return after[0][1]
        if not after:
            return before[-1][1]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 + (c1 - c0) * (when - t0) / (t1 - t0)

    def between(self, start: float, end: float, prefix: str) -> float | None:
        if not any(k.startswith(prefix) for k in self.pids):
            return None
        return self.at(end, prefix) - self.at(start, prefix)
