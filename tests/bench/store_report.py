"""store_bench.py's systems, its measured runs (`Run`) and its report: the table of medians,
the node/bare ratios against the target, and the notes on what may have held a run back."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

from report import FOREIGN_LIMIT

PREFIX = "/users"  # the store route the two systems serve
TARGET = 0.9  # node / bare, GET and PUT
SYSTEMS = ("node", "bare")
METHODS = ("GET", "PUT")
LABELS = {"node": "node store:users", "bare": "bare aiohttp+asyncpg"}


@dataclass
class Run:
    system: str
    method: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    sut_us: float  # CPU time of the system per request
    pg_us: float  # CPU time of its PostgreSQL backends per request
    load_busy: float  # % of the load CPU
    sut_busy: float  # % of the SUT CPU
    foreign: float  # % of a CPU used by processes not in the benchmark
    backends: int


def median(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def table(runs: list[Run], args: argparse.Namespace) -> str:
    header = [
        "system",
        "method",
        "req/s",
        "p50",
        "p99",
        "errors",
        "SUT us/req",
        "PG us/req",
        f"CPU{args.sut_cpu} (SUT)",
        f"CPU{args.load_cpu} (wrk+PG)",
    ]
    lines = [header]
    for method in METHODS:
        for system in SYSTEMS:
            mine = [r for r in runs if r.system == system and r.method == method]
            lines.append(
                [
                    LABELS[system],
                    f"{method} {PREFIX}/<key>",
                    f"{median(mine, 'rps'):,.0f}",
                    f"{median(mine, 'p50_ms'):.2f} ms",
                    f"{median(mine, 'p99_ms'):.2f} ms",
                    str(sum(r.errors for r in mine)),
                    f"{median(mine, 'sut_us'):.0f}",
                    f"{median(mine, 'pg_us'):.0f}",
                    f"{median(mine, 'sut_busy'):.0f} %",
                    f"{median(mine, 'load_busy'):.0f} %",
                ]
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i >= 2 else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = (
        "|"
        + "|".join("-" * (w + 1) + ":" if i >= 2 else "-" * (w + 2) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([fmt(lines[0]), rule, *(fmt(line) for line in lines[1:])])


def ratio_lines(runs: list[Run]) -> tuple[list[str], bool]:
    out, met = [], True
    for method in METHODS:
        node = [r for r in runs if r.system == "node" and r.method == method]
        bare = [r for r in runs if r.system == "bare" and r.method == method]
        value = median(node, "rps") / median(bare, "rps")
        per_round = [
            n.rps / b.rps
            for n, b in zip(
                sorted(node, key=lambda r: r.round),
                sorted(bare, key=lambda r: r.round),
                strict=True,
            )
        ]
        p99 = median(node, "p99_ms") / median(bare, "p99_ms")
        verdict = "ok" if value >= TARGET else "MISSED"
        met = met and value >= TARGET
        rounds = ", ".join(f"{v:.2f}" for v in per_round)
        cost = median(bare, "sut_us") / median(node, "sut_us")
        out.append(
            f"- {method} node/bare: **{value:.2f}x** req/s (target >= {TARGET}: {verdict}); "
            f"p99 {p99:.2f}x; per round {rounds}; CPU per request bare/node {cost:.2f}x"
        )
    return out, met


def notes(runs: list[Run], args: argparse.Namespace) -> list[str]:
    out = []
    for r in runs:
        name = f"round {r.round + 1} {r.system} {r.method}"
        if r.errors:
            out.append(f"{name}: {r.errors} errors (non-2xx or socket)")
        if r.load_busy >= 90:
            out.append(
                f"{name}: CPU{args.load_cpu} (wrk + PostgreSQL) {r.load_busy:.0f} % busy: "
                "the load side may be the bottleneck"
            )
        if r.foreign >= FOREIGN_LIMIT:
            out.append(f"{name}: {r.foreign:.0f} % of a CPU went to processes not ours")
        if r.backends != args.pool:
            out.append(f"{name}: {r.backends} backends found for {args.pool} pooled connections")
    return out
