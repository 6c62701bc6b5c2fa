"""dashboard/history.py: a bounded ring of points, served as aligned columns."""

from __future__ import annotations

from dashboard.history import History


def row(name: str, rps: float) -> dict:
    return {"name": name, "rps": rps, "reporting": True}


def cluster(rps: float) -> dict:
    return {"rps": rps, "p50": 1.0, "p95": 2.0, "p99": 3.0, "error_pct": 0.0, "healthy": 1}


def test_ring_keeps_only_its_capacity():
    """Memory is bounded: the oldest points fall out."""
    history = History(3)
    for t in range(5):
        history.append(float(t), [row("a", t)], cluster(t))
    assert history.columns()["t"] == [2.0, 3.0, 4.0]


def test_a_node_that_joins_later_is_padded_with_none():
    """Per-node series line up with `t`: absent points are None, not zero."""
    history = History(10)
    history.append(1.0, [row("a", 1)], cluster(1))
    history.append(2.0, [row("a", 2), row("b", 5)], cluster(7))
    columns = history.columns()
    assert columns["nodes"] == {"a": [1, 2], "b": [None, 5]}
    assert history.columns(1)["t"] == [2.0]


def test_rps_ago_reads_the_trend_point():
    """The rate about a minute ago, or the oldest known when the history is younger."""
    history = History(100)
    for t in range(0, 90, 10):
        history.append(float(t), [], cluster(float(t)))
    assert history.rps_ago(60) == 20.0
    assert History(5).rps_ago(60) == 0.0


def test_partial_totals_are_gaps_not_dips():
    """While a member is stale the cluster total is None (a gap), and its own series too."""
    history = History(10)
    history.append(1.0, [row("a", 5), row("b", 5)], cluster(10))
    late = {"name": "b", "rps": 5, "reporting": False}
    history.append(2.0, [row("a", 5), late], {**cluster(5), "partial": True})
    columns = history.columns()
    assert columns["rps"] == [10, None]
    assert columns["nodes"] == {"a": [5, 5], "b": [5, None]}
