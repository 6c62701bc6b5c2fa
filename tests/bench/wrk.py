"""Runs wrk pinned to a CPU and parses its `--latency` report into a `WrkResult`."""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import BenchError, require_tool

# wrk prints times with these units (src/units.c) and sizes in binary multiples.
TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}

NUMBER = r"([\d.]+)"
RE_AVG = re.compile(rf"^\s*Latency\s+{NUMBER}(\w+)", re.M)
RE_PERCENTILE = re.compile(rf"^\s*(50|75|90|99)(?:\.0+)?%\s+{NUMBER}(\w+)", re.M)
RE_TOTAL = re.compile(rf"^\s*(\d+) requests in {NUMBER}(\w+), {NUMBER}(\w+) read", re.M)
RE_RPS = re.compile(rf"^Requests/sec:\s+{NUMBER}", re.M)
RE_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.M)
RE_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)


@dataclass
class WrkResult:
    url: str
    requests: int
    duration_s: float
    requests_per_sec: float
    latency_avg_ms: float
    latency_ms: dict[str, float]  # "50", "75", "90", "99" -> milliseconds
    bytes_read: int
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def p50_ms(self) -> float:
        return self.latency_ms["50"]

    @property
    def p99_ms(self) -> float:
        return self.latency_ms["99"]

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms}


def to_ms(value: str, unit: str) -> float:
    if unit not in TIME_UNITS_MS:
        raise BenchError(f"wrk printed an unknown time unit {unit!r}")
    return float(value) * TIME_UNITS_MS[unit]


def parse(output: str, url: str) -> WrkResult:
    """Parse wrk's report (it must have been run with --latency)."""
    avg, total, rps = RE_AVG.search(output), RE_TOTAL.search(output), RE_RPS.search(output)
    percentiles = {m[1]: to_ms(m[2], m[3]) for m in RE_PERCENTILE.finditer(output)}
    if avg is None or total is None or rps is None or not {"50", "99"} <= percentiles.keys():
        raise BenchError(f"cannot parse wrk output for {url}:\n{output}")
    non_2xx = RE_NON_2XX.search(output)
    sockets = RE_SOCKET.search(output)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups()), strict=True))
        if sockets
        else {}
    )
    duration_ms = to_ms(total[2], total[3])
    return WrkResult(
        url=url,
        requests=int(total[1]),
        duration_s=duration_ms / 1000,
        requests_per_sec=float(rps[1]),
        latency_avg_ms=to_ms(avg[1], avg[2]),
        latency_ms=percentiles,
        bytes_read=int(float(total[4]) * SIZE_UNITS.get(total[5], 1)),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def run(
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    cpu: int = 0,
    timeout_s: float = 5.0,
    script: Path | None = None,
) -> WrkResult:
    """One wrk run against `url`, pinned to `cpu` (with a Lua `script`: its requests, the
    url giving scheme, host and port); raises BenchError if wrk fails."""
    wrk, taskset = require_tool("wrk"), require_tool("taskset")
    argv = [
        taskset,
        "-c",
        str(cpu),
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s:g}s",
        "--latency",
        *(["-s", str(script)] if script is not None else []),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode} on {url}:\n{done.stderr}{done.stdout}")
    return parse(done.stdout, url)
