"""dashboard/membership.py: join, down, left, back and restart events from node states."""

from __future__ import annotations

from dashboard.membership import MembershipLog


def row(name: str, state: str = "up", started: float = 1.0, last_seen: float = 0.0) -> dict:
    return {"name": name, "state": state, "started": started, "last_seen": last_seen}


def kinds(log: MembershipLog) -> list[tuple[str, str]]:
    return [(e["node"], e["kind"]) for e in reversed(log.recent())]


def test_the_first_frame_makes_no_events():
    """Nodes already there when the page's node starts did not just join."""
    log = MembershipLog()
    log.update([row("a"), row("b")], 10.0)
    assert kinds(log) == []


def test_down_back_left_and_joined():
    """A silent node goes down (at its last beat), comes back; another leaves; a third joins."""
    log = MembershipLog()
    log.update([row("a"), row("b")], 10.0)
    log.update([row("a"), row("b", "stale")], 12.0)
    log.update([row("a"), row("b", "down", last_seen=9.5)], 14.0)
    log.update([row("a"), row("b", "down", last_seen=9.5)], 15.0)
    log.update([row("a"), row("b", started=2.0)], 20.0)
    log.update([row("a", "left", last_seen=21.0), row("b", started=2.0), row("c")], 21.5)
    assert kinds(log) == [("b", "down"), ("b", "back"), ("a", "left"), ("c", "joined")]
    down = log.recent()[-1]
    assert down["t"] == 9.5


def test_a_quick_restart_is_an_event():
    """A node back as a new process before it went down is noted as restarted."""
    log = MembershipLog()
    log.update([row("a")], 1.0)
    log.update([row("a", started=5.0)], 6.0)
    assert kinds(log) == [("a", "restarted")]


def test_the_log_is_bounded():
    """Only the newest MAX_EVENTS events are kept."""
    log = MembershipLog()
    log.update([], 0.0)
    for i in range(200):
        log.update([row(f"n{i}")], float(i))
    assert len(log.events) == 50
