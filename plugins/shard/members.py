"""A shard set's members as the store keeps them: each member's primary and replicas, the
set's layout check, and a route's counts per member."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from plugins.shard.documents import DocumentShard

log = logging.getLogger("scalenode.shard")
LATENCY_WINDOW = 1024  # recent query times kept per member, for the p99


@dataclass(slots=True)
class MemberStats:
    reads: int = 0
    writes: int = 0
    unavailable: int = 0
    replica_reads: int = 0
    recent: list[float] = field(default_factory=list)  # seconds, a ring of the latest

    def took(self, seconds: float) -> None:
        recent = self.recent
        if len(recent) >= LATENCY_WINDOW:
            del recent[: LATENCY_WINDOW // 2]
        recent.append(seconds)

    def p99_ms(self) -> float:
        if not self.recent:
            return 0.0
        ordered = sorted(self.recent)
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3)


@dataclass(slots=True)
class Member:
    name: str
    primary: DocumentShard
    replicas: list[DocumentShard]
    lag: Any = None  # a plugins.shard.replicas.ReplicaSet when the member has replicas


@dataclass(slots=True)
class ShardSet:
    """A set's members, shared by its routes; `refusal` set when the members hold another
    layout's data (every call is then refused with it, a 503, rather than misplaced).

    Each member's layout is confirmed before the set touches its data: at start, or, for
    a member that was down then, on its first call."""

    name: str
    members: list[Member]
    layouts: dict[str, str]  # member -> the layout it must hold (plugins.shard.layout_of)
    refusal: str | None = None
    confirmed: set[str] = field(default_factory=set)

    async def confirm(self, member: Member) -> None:
        """Record or compare the member's layout (raises ShardUnavailable when it is down)."""
        layout = self.layouts[member.name]
        recorded = await member.primary.claim_layout(layout)
        if recorded != layout:
            # Its data was placed by another layout (members added, removed or reordered,
            # DSNs swapped): serving would read and write keys on the wrong members.
            self.refusal = (
                f"shard set {self.name}: member {member.name} holds data of the layout "
                f"{recorded}, not the configured {layout}; restore the config (a rebalance "
                "moves data between layouts)"
            )
            log.error("%s", self.refusal)
        self.confirmed.add(member.name)
