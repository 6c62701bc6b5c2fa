"""Membership events seen by this node's dashboard: who joined, went down, left, came back.

Derived from consecutive frames' node states (dashboard/aggregate.py), so every serving
node keeps its own short log; memory is bounded by MAX_EVENTS.
"""

from __future__ import annotations

from collections import deque
from typing import Any

MAX_EVENTS = 50
GONE = ("down", "left")


class MembershipLog:
    def __init__(self) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.known: dict[str, tuple[str, Any]] = {}  # name -> (state, started)
        self.first = True

    def update(self, rows: list[dict[str, Any]], now: float) -> None:
        """Note the transitions from the last frame's states to these `rows`' ones. The
        first frame only learns who is there: the nodes it finds did not just join."""
        current = {row["name"]: row for row in rows}
        for name, row in current.items():
            state, started = row["state"], row.get("started")
            before = self.known.get(name)
            kind = None
            if before is None:
                kind = None if self.first or state in GONE else "joined"
            elif state in GONE and before[0] not in GONE:
                kind = state
            elif state not in GONE and before[0] in GONE:
                kind = "back"
            elif state not in GONE and started != before[1]:
                kind = "restarted"  # back within the stale window, as a new process
            if kind is not None:
                at = row["last_seen"] if kind in GONE else now
                self.events.append({"t": round(at, 3), "node": row["name"], "kind": kind})
            self.known[name] = (state, started)
        for name in set(self.known) - set(current):  # past the retention: forgotten
            del self.known[name]
        self.first = False

    def recent(self, count: int = 20) -> list[dict[str, Any]]:
        """The newest `count` events, newest first."""
        return list(self.events)[-count:][::-1]
