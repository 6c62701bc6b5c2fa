"""Benchmark results: the Markdown table, the ratio lines, the JSON file and its metadata."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cpu import Usage
from wrk import WrkResult

FOREIGN_LIMIT = 10.0  # % of one CPU used by others during a run before it is flagged


@dataclass
class Row:
    """One measured scenario: what ran, wrk's numbers and how busy each CPU was."""

    key: str
    label: str
    path: str
    url: str
    result: WrkResult
    cpu: Usage  # over the measured run
    baseline: str | None = None
    sample: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, int] = field(default_factory=dict)  # origin traffic in the measured run
    background: float | None = None  # % of a CPU busy just before the run, servers idle
    attempts: int = 1  # measured runs made; the one with the least foreign load is kept


@dataclass(frozen=True)
class Ratio:
    numerator: str
    denominator: str
    label: str


def ratio(rows: dict[str, Row], numerator: str, denominator: str) -> float | None:
    if numerator not in rows or denominator not in rows:
        return None
    base = rows[denominator].result.requests_per_sec
    return rows[numerator].result.requests_per_sec / base if base else None


def markdown_table(rows: dict[str, Row], load_cpu: int, sut_cpu: int) -> str:
    header = [
        "system",
        "path",
        "req/s",
        "p50",
        "p99",
        "ratio",
        "errors",
        f"CPU{sut_cpu} (SUT)",
        f"CPU{load_cpu} (wrk+upstream)",
    ]
    lines = [header]
    for row in rows.values():
        r = row.result
        value = ratio(rows, row.key, row.baseline) if row.baseline else None
        lines.append(
            [
                row.label,
                row.path,
                f"{r.requests_per_sec:,.0f}",
                f"{r.p50_ms:.2f} ms",
                f"{r.p99_ms:.2f} ms",
                f"{value:.2f}x {rows[row.baseline].label}" if value and row.baseline else "—",
                str(r.errors),
                f"{row.cpu.busy_percent.get(sut_cpu, 0):.0f} %",
                f"{row.cpu.busy_percent.get(load_cpu, 0):.0f} %",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {2, 3, 4, 6, 7, 8}

    def fmt(cells: list[str]) -> str:
        padded = (
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([fmt(lines[0]), rule, *(fmt(line) for line in lines[1:])])


def ratio_lines(rows: dict[str, Row], ratios: list[Ratio]) -> list[str]:
    out = []
    for item in ratios:
        value = ratio(rows, item.numerator, item.denominator)
        if value is not None:
            out.append(f"- {item.label}: **{value:.2f}x**")
    return out


def anomalies(rows: dict[str, Row], load_cpu: int, sut_cpu: int, connections: int) -> list[str]:
    """What makes a row less trustworthy than it looks."""
    notes = []
    for row in rows.values():
        r, name = row.result, row.label
        load, sut = row.cpu.busy_percent.get(load_cpu, 0), row.cpu.busy_percent.get(sut_cpu, 0)
        if r.errors:
            notes.append(f"{name}: {r.non_2xx} non-2xx, socket errors {r.socket_errors}")
        if load >= 90:
            notes.append(
                f"{name}: CPU{load_cpu} (wrk + origin) was {load:.0f} % busy: "
                "the load side may be the bottleneck, so this is a lower bound"
            )
        if sut < 90:
            notes.append(f"{name}: the system under test kept CPU{sut_cpu} only {sut:.0f} % busy")
        if row.cpu.foreign_percent >= FOREIGN_LIMIT:
            notes.append(
                f"{name}: {row.cpu.foreign_percent:.0f} % of a CPU went to processes not in the "
                "benchmark: the machine was not quiet, numbers are depressed"
            )
        if row.origin.get("connections", 0) > connections:
            notes.append(
                f"{name}: the origin accepted {row.origin['connections']} connections in the run "
                f"(more than {connections}: upstream keep-alive is not holding)"
            )
    return notes


def command_version(argv: list[str], *, strict: bool = False) -> str:
    """The first line a command prints; with `strict`, "unknown" unless it exits 0."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    text = (done.stdout + done.stderr).strip()
    if not text or (strict and done.returncode != 0):
        return "unknown"
    return text.splitlines()[0]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(project: Path, tools: dict[str, str]) -> dict[str, Any]:
    git = ["git", "-C", str(project)]
    dirty = command_version([*git, "status", "--porcelain", "--untracked-files=no"], strict=True)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "project": str(project),
        "commit": command_version([*git, "rev-parse", "--short", "HEAD"], strict=True),
        "dirty": dirty not in ("", "unknown"),
        "python": sys.version.split()[0],
        "aiohttp": metadata.version("aiohttp"),
        "uvloop": metadata.version("uvloop"),
        "nginx": command_version([tools["nginx"], "-v"]),
        "wrk": command_version([tools["wrk"], "-v"]),
        "kernel": platform.release(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
    }


def write_json(
    path: Path,
    meta: dict[str, Any],
    rows: dict[str, Row],
    ratios: list[Ratio],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "meta": meta,
        "results": [
            {
                "key": row.key,
                "label": row.label,
                "path": row.path,
                "baseline": row.baseline,
                **row.result.as_dict(),
                "cpu": row.cpu.as_dict(),
                "origin": row.origin,
                "background_percent_before": row.background,
                "attempts": row.attempts,
                "sample": row.sample,
            }
            for row in rows.values()
        ],
        "ratios": [
            {
                "label": item.label,
                "numerator": item.numerator,
                "denominator": item.denominator,
                "value": ratio(rows, item.numerator, item.denominator),
            }
            for item in ratios
        ],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
