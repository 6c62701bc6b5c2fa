"""Recommended replicas: how many nodes the cluster should run, from its CPU, p95 latency
and request-rate trend, so that an HPA or an operator can act on one number.

Thresholds follow the seed: scale up at 70 % CPU or p95 over its target, down below
30 % CPU, always between a minimum and a maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplicaPolicy:
    minimum: int = 1
    maximum: int = 10
    scale_up_cpu: float = 70.0  # percent of one core, averaged over the reporting nodes
    scale_down_cpu: float = 30.0
    p95_target_ms: float = 250.0


@dataclass(frozen=True, slots=True)
class Recommendation:
    current: int
    replicas: int
    reason: str

    @property
    def direction(self) -> str:
        if self.replicas > self.current:
            return "up"
        return "down" if self.replicas < self.current else "hold"


def recommend(
    current: int,
    cpu_percent: float,
    p95_ms: float | None,
    rps_now: float,
    rps_before: float,
    policy: ReplicaPolicy,
) -> Recommendation:
    """The replica count for `current` nodes averaging `cpu_percent` with `p95_ms` latency,
    whose request rate went from `rps_before` (a minute ago) to `rps_now`.

    Growing traffic scales the CPU forward (what the nodes will need if the trend holds),
    so the cluster grows before it saturates; shrinking traffic never speeds a scale-down.
    """
    current = max(current, 1)
    growth = rps_now / rps_before if rps_before > 0 and rps_now > rps_before else 1.0
    projected = cpu_percent * growth
    slow = p95_ms is not None and p95_ms > policy.p95_target_ms
    if projected >= policy.scale_up_cpu:
        # As an HPA does: enough nodes for each to sit at the threshold.
        wanted = max(current + 1, math.ceil(current * projected / policy.scale_up_cpu))
        trend = f" (traffic x{growth:.2f} in 1 min)" if growth > 1.0 else ""
        reason = f"CPU {cpu_percent:.0f} %{trend} >= {policy.scale_up_cpu:.0f} %"
    elif slow:
        wanted = current + 1
        reason = f"p95 {p95_ms:.0f} ms > {policy.p95_target_ms:.0f} ms target"
    elif projected < policy.scale_down_cpu and current > 1:
        # One step at a time, and only to where the rest stays under the scale-up line.
        after = projected * current / (current - 1)
        if after < policy.scale_up_cpu:
            wanted = current - 1
            reason = f"CPU {cpu_percent:.0f} % < {policy.scale_down_cpu:.0f} %"
        else:
            wanted, reason = current, "steady"
    else:
        wanted, reason = current, "within thresholds"
    clamped = min(max(wanted, policy.minimum), policy.maximum)
    if clamped != wanted:
        bound = "maximum" if clamped < wanted else "minimum"
        reason = f"{reason}; held at the {bound} of {clamped}"
    return Recommendation(current, clamped, reason)
