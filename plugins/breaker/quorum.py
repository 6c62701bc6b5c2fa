"""Corroboration of shared trips: which nodes have reported a member's trip, until when.

One node's trip may say more about that node (its network path, its own overload) than
about the member, so a node that did not trip a member opens it only when `corroborate`
distinct nodes have live reports (Polly#287's quorum). Pure: time comes in as `now`.
"""

from __future__ import annotations


class TripReports:
    """The live trip reports of one member, by node: each lasts its reporter's open period."""

    __slots__ = ("until",)

    def __init__(self) -> None:
        self.until: dict[str, float] = {}

    def add(self, node: str, until: float) -> None:
        """`node` tripped the member, open until `until` (its latest trip replaces an older)."""
        self.until[node] = until

    def count(self, now: float) -> int:
        """Distinct nodes whose report is still live at `now` (expired ones are dropped)."""
        self.until = {node: until for node, until in self.until.items() if until > now}
        return len(self.until)

    def clear(self) -> None:
        """The member closed (a trial passed somewhere, or an operator reset it)."""
        self.until.clear()
