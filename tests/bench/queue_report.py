"""queue_bench.py's report: the Row of one system's round, the per-round and median tables
and the ratio lines judged against the targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import cpu

CELERY_TARGET = 1.2  # node drain / Celery drain
ENQUEUE_TARGET = 0.8  # node enqueue / bare publisher


@dataclass
class Row:
    phase: str  # enqueue | drain
    key: str
    label: str
    jobs: int
    seconds: float
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    sut_cpu_s: float | None = None  # CPU seconds of the system under test over the run
    broker_cpu_s: float | None = None  # RabbitMQ's
    usage: cpu.Usage | None = None
    notes: list[str] = field(default_factory=list)
    round: int = 1

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


RATIOS = [
    ("node", "bare", "enqueue: node gateway / bare aio-pika publisher", ENQUEUE_TARGET),
    ("node_drain", "celery_drain", "drain: node worker / Celery", CELERY_TARGET),
]


def table(rows: list[Row], load_cpu: int, sut_cpu: int) -> str:
    """Every round's rows; a ratio is to the baseline of the same round."""
    by_round = {(row.key, row.round): row for row in rows}
    baseline = {num: den for num, den, _, _ in RATIOS}
    header = ["phase", "round", "system", "jobs", "s", "jobs/s", "p50", "p99", "errors"]
    header += ["SUT CPU/job", "RabbitMQ CPU/job", f"CPU{sut_cpu}", f"CPU{load_cpu}", "ratio"]
    lines = [header]
    for row in rows:
        base = by_round.get((baseline.get(row.key, ""), row.round))
        ratio = f"{row.rate / base.rate:.2f}x" if base and base.rate else "—"
        busy = row.usage.busy_percent if row.usage else {}
        lines.append(
            [
                row.phase,
                str(row.round),
                row.label,
                str(row.jobs),
                f"{row.seconds:.2f}",
                f"{row.rate:,.0f}",
                f"{row.p50_ms:.1f} ms" if row.p50_ms is not None else "—",
                f"{row.p99_ms:.1f} ms" if row.p99_ms is not None else "—",
                str(row.errors),
                us_per_job(row.sut_cpu_s, row.jobs),
                us_per_job(row.broker_cpu_s, row.jobs),
                f"{busy.get(sut_cpu, 0):.0f} %",
                f"{busy.get(load_cpu, 0):.0f} %",
                ratio,
            ]
        )
    return markdown(lines)


def medians_table(rows: list[Row]) -> str:
    """Each system's median over its rounds: rate, latency, CPU per job."""
    header = ["phase", "system", "rounds", "jobs/s", "p50", "SUT CPU/job", "RabbitMQ CPU/job"]
    lines = [header]
    for key in dict.fromkeys(row.key for row in rows):
        runs = [row for row in rows if row.key == key]

        def middle(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return statistics.median(known) if known else None

        p50 = middle([row.p50_ms for row in runs])
        sut = middle([row.sut_cpu_s / row.jobs if row.sut_cpu_s else None for row in runs])
        broker = middle([row.broker_cpu_s / row.jobs if row.broker_cpu_s else None for row in runs])
        lines.append(
            [
                runs[0].phase,
                runs[0].label,
                str(len(runs)),
                f"{statistics.median(row.rate for row in runs):,.0f}",
                f"{p50:.1f} ms" if p50 is not None else "—",
                us_per_job(sut, 1),
                us_per_job(broker, 1),
            ]
        )
    return markdown(lines)


def us_per_job(seconds: float | None, jobs: int) -> str:
    return f"{1e6 * seconds / jobs:.0f} us" if seconds is not None else "—"


def markdown(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def round_ratios(rows: list[Row], num: str, den: str) -> list[float]:
    """num / den of each round that has both."""
    by_round = {(row.key, row.round): row for row in rows}
    ratios = []
    for row in rows:
        if row.key == num and (base := by_round.get((den, row.round))) and base.rate:
            ratios.append(row.rate / base.rate)
    return ratios


def ratio_lines(rows: list[Row]) -> list[str]:
    """Per phase: every round's ratio, their median (judged against the target) and the
    ratio of the two medians."""
    lines = []
    for num, den, label, target in RATIOS:
        ratios = round_ratios(rows, num, den)
        if not ratios:
            continue
        value = statistics.median(ratios)
        rates = {k: statistics.median(r.rate for r in rows if r.key == k) for k in (num, den)}
        verdict = "ok" if value >= target else "MISSED"
        each = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        lines.append(
            f"{label}: median {value:.2f} over {len(ratios)} round(s) [{each}]; "
            f"median/median {rates[num] / rates[den]:.2f} (target >= {target:g}: {verdict})"
        )
    return lines
