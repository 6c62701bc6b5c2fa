"""plugins/breaker/cap.py: at most max_ejection_percent of a pool's members open at once."""

from __future__ import annotations

import logging

import pytest

from plugins.breaker.cap import WARN_EVERY, EjectionCap
from plugins.breaker.circuit import CLOSED, HALF_OPEN, OPEN, PROBE, Circuit
from plugins.breaker.settings import BreakerSettings

SETTINGS = BreakerSettings(min_requests=4, open_seconds=5)


def pool(members: int, percent: float = 50) -> list[Circuit]:
    cap = EjectionCap("app", percent)
    circuits = [Circuit(SETTINGS, f"app|m{i}:1", cap=cap) for i in range(members)]
    cap.circuits = circuits
    return circuits


def fail(circuit: Circuit, now: float, count: int = 4) -> None:
    for _ in range(count):
        circuit.record(now, True, False, circuit.admit(now))


@pytest.mark.parametrize(
    ("members", "percent", "limit"),
    [(1, 50, 1), (2, 50, 1), (3, 50, 1), (4, 50, 2), (5, 100, 5), (3, 10, 1), (20, 10, 2)],
)
def test_the_limit_rounds_down_but_is_never_below_one(
    members: int, percent: float, limit: int
) -> None:
    """percent of the members, rounded down; a pool of one, or a small one, may still
    lose one member."""
    assert pool(members, percent)[0].cap.limit == limit  # type: ignore[union-attr]


def test_a_trip_past_the_cap_leaves_the_member_in_service() -> None:
    """Four members at 50 %: two trips open, the third member stays closed, counted, its
    window cleared (it takes min_requests more failures to ask again)."""
    circuits = pool(4)
    for circuit in circuits[:3]:
        fail(circuit, 100.0)
    assert [c.state for c in circuits[:3]] == [OPEN, OPEN, CLOSED]
    assert (circuits[2].capped, circuits[2].trips) == (1, 0)
    fail(circuits[2], 100.5, count=3)
    assert circuits[2].capped == 1
    fail(circuits[2], 100.5, count=1)
    assert circuits[2].capped == 2


def test_a_half_open_member_counts_and_may_reopen() -> None:
    """A half-open member is still out of service: at the cap, its failed trial re-opens
    it, and a closed member may not take its place."""
    first, second = pool(2)
    fail(first, 100.0)
    assert first.admit(105.0) == PROBE
    assert first.state == HALF_OPEN
    fail(second, 105.0)
    assert second.state == CLOSED
    first.record(105.0, True, False, PROBE)
    assert (first.state, first.capped) == (OPEN, 0)


def test_a_close_makes_room() -> None:
    """Once an open member closes, another may open."""
    first, second = pool(2)
    fail(first, 100.0)
    first.close()
    fail(second, 100.0)
    assert second.state == OPEN


def test_following_the_cluster_is_capped_too() -> None:
    """A corroborated trip from other nodes does not open a member past the cap."""
    first, second = pool(2)
    fail(first, 100.0)
    assert second.follow(100.0, 30.0, 0) is False
    assert (second.state, second.capped) == (CLOSED, 1)


def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """While the cap holds, one warning per WARN_EVERY seconds, with the refusals since."""
    first, second = pool(2)
    fail(first, 100.0)
    with caplog.at_level(logging.WARNING, "scalenode.breaker"):
        for now in (100.0, 101.0, 102.0, 100.0 + WARN_EVERY):
            fail(second, now)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("upstream app: 1 trip(s) left members in service: 1 of 2")
    assert lines[1].startswith("upstream app: 3 trip(s)")
