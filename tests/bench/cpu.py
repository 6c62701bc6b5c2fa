"""CPU accounting over a measured run (Linux /proc): how busy each CPU was, how much of it
our processes used, and how much went to something else on the machine ("foreign" load)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from harness import children

TICK = os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its direct children (an nginx worker) so far."""
    total = 0.0
    for p in (pid, *children(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def cpu_jiffies() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies since boot, from /proc/stat."""
    times: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in values[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            times[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return times


def waited_children_seconds() -> float:
    """CPU seconds of this process's children that have been waited for (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Usage:
    elapsed_s: float
    busy_percent: dict[int, float]  # per CPU
    process_s: dict[str, float]  # per watched process, plus "wrk" (waited children)
    foreign_percent: float  # busy CPU time none of ours used, in % of one CPU

    def as_dict(self) -> dict[str, object]:
        return {
            "elapsed_s": round(self.elapsed_s, 2),
            "busy_percent": {str(k): v for k, v in self.busy_percent.items()},
            "process_s": {k: round(v, 2) for k, v in self.process_s.items()},
            "foreign_percent": self.foreign_percent,
        }


class Meter:
    """`start()` before a run, `stop()` after: a `Usage` of the CPUs and the `pids` in between."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def _read(self) -> tuple[float, dict[int, tuple[int, int]], dict[str, float]]:
        seconds = {name: process_seconds(pid) for name, pid in self.pids.items()}
        seconds["wrk"] = waited_children_seconds()
        return time.monotonic(), cpu_jiffies(), seconds

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> Usage:
        (t0, j0, s0), (t1, j1, s1) = self._before, self._read()
        busy: dict[int, float] = {}
        busy_s = 0.0
        for cpu, (b1, total1) in j1.items():
            b0, total0 = j0.get(cpu, (0, 0))
            busy[cpu] = round(100 * (b1 - b0) / (total1 - total0), 1) if total1 > total0 else 0.0
            busy_s += (b1 - b0) / TICK
        ours = {name: s1[name] - s0[name] for name in s1}
        elapsed = t1 - t0
        foreign = max(0.0, busy_s - sum(ours.values()))
        return Usage(elapsed, busy, ours, round(100 * foreign / elapsed, 1) if elapsed else 0.0)


def wait_quiet(limit: float = 10.0, window: float = 0.5, timeout: float = 30.0) -> float:
    """Wait until all CPUs together are below `limit` % of one CPU busy over `window` seconds
    (our servers idle between runs, so that is someone else's load); give up after `timeout`.
    Returns the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        j0 = cpu_jiffies()
        time.sleep(window)
        j1 = cpu_jiffies()
        busy = sum(j1[c][0] - j0[c][0] for c in j1 if c in j0) / TICK / window * 100
        if busy < limit or time.monotonic() >= deadline:
            return round(busy, 1)
