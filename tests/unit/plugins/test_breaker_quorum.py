"""plugins/breaker/quorum.py: counting the nodes that reported a member's trip."""

from __future__ import annotations

from plugins.breaker.quorum import TripReports


def test_reports_count_distinct_nodes() -> None:
    """Two nodes are two reports; one node reporting again is still one."""
    reports = TripReports()
    reports.add("a", 130.0)
    reports.add("a", 140.0)
    assert reports.count(100.0) == 1
    reports.add("b", 130.0)
    assert reports.count(100.0) == 2


def test_a_report_lasts_its_open_period() -> None:
    """A report counts until its reporter's open period ends, not after."""
    reports = TripReports()
    reports.add("a", 110.0)
    reports.add("b", 130.0)
    assert reports.count(109.9) == 2
    assert reports.count(110.0) == 1
    assert reports.until == {"b": 130.0}  # the expired one is dropped


def test_a_nodes_latest_report_replaces_its_older_one() -> None:
    """A node's re-trip (a longer period) is its report from now on."""
    reports = TripReports()
    reports.add("a", 110.0)
    reports.add("a", 150.0)
    assert reports.count(120.0) == 1


def test_clear_forgets_every_report() -> None:
    """A close clears the member's reports."""
    reports = TripReports()
    reports.add("a", 130.0)
    reports.clear()
    assert reports.count(100.0) == 0
