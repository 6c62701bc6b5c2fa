"""A shard set's members as the store keeps them: each member's primary and replicas, the
set's layout check, its bucket map (read from the members, watched for a rebalance's new
versions), and a route's counts per member."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from node import tasks
from plugins.shard.buckets import BucketMap
from plugins.shard.documents import DocumentShard, PlacedShard, ShardUnavailable

log = logging.getLogger("scalenode.shard")
LATENCY_WINDOW = 1024  # recent query times kept per member, for the p99
# How often a node reads the members' newest map: a rebalance's switch reaches every node
# within this (a write fenced by a switch reads it at once, see StoreTarget).
MAP_POLL = 0.5
# The cluster bus channel (+ the set's name) on which a rebalance announces a new map version:
# with Redis configured, nodes read the map on the announcement rather than the next poll.
MAP_CHANNEL = "sn:shard:map:"
PLACE_KEYS = ("set", "buckets", "member")  # what a member's recorded layout must agree on


@dataclass(slots=True)
class MemberStats:
    reads: int = 0
    writes: int = 0
    unavailable: int = 0
    replica_reads: int = 0
    fenced: int = 0  # calls that met a moving bucket and were asked again
    fallbacks: int = 0  # reads that found no replica recent enough: the primary answered
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
    primary: PlacedShard
    replicas: list[DocumentShard]
    lag: Any = None  # a plugins.shard.replicas.ReplicaSet when the member has replicas


def same_place(recorded: str, expected: str) -> bool:
    """The recorded layout is this set's, with this many buckets, for this member."""
    try:
        old, new = orjson.loads(recorded), orjson.loads(expected)
    except orjson.JSONDecodeError:
        return False
    return all(old.get(key) == new.get(key) for key in PLACE_KEYS)


@dataclass(slots=True)
class ShardSet:
    """A set's members, shared by its routes; `refusal` set when the members hold another
    layout's data (every call is then refused with it, a 503, rather than misplaced).

    Each member's layout is confirmed, and its bucket states recorded from the map, before
    the set touches its data: at start, or, for a member that was down then, on its first
    call. The map is the newest any member holds; with none anywhere (a new set), version 1
    spreads the buckets evenly over the members first recorded."""

    name: str
    members: list[Member]
    layouts: dict[str, str]  # member -> the layout it must hold (plugins.shard.layout_of)
    buckets: int = 1024
    refusal: str | None = None
    confirmed: set[str] = field(default_factory=set)
    map: BucketMap | None = None
    by_name: dict[str, Member] = field(default_factory=dict)
    map_reads: int = 0
    # Query times per member, over every route of the set (the p99 the set's card shows).
    timings: dict[str, MemberStats] = field(default_factory=dict)
    _reading: asyncio.Task[None] | None = None
    _watch: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.by_name = {member.name: member for member in self.members}
        self.timings = {member.name: MemberStats() for member in self.members}

    def owner(self, bucket: int) -> Member | None:
        """The member owning `bucket` in the map this node knows; None: no map yet."""
        known = self.map
        return None if known is None else self.by_name[known.owner_name(bucket)]

    def owned(self) -> dict[str, list[int]]:
        """Each configured member's buckets in the current map."""
        owned: dict[str, list[int]] = {member.name: [] for member in self.members}
        if self.map is not None:
            for bucket in range(len(self.map.owners)):
                owned[self.map.owner_name(bucket)].append(bucket)
        return owned

    async def start(self) -> None:
        for member in self.members:
            with contextlib.suppress(ShardUnavailable):  # down: checked on first use
                await self.confirm(member)
        self._watch = asyncio.create_task(self._watching(), name=f"shard-map-{self.name}")

    async def stop(self) -> None:
        await tasks.stop(task for task in (self._watch, self._reading) if task is not None)

    async def confirm(self, member: Member) -> None:
        """Record or compare the member's layout, and its bucket states (raises
        ShardUnavailable when it is down, or when the map is not known yet)."""
        layout = self.layouts[member.name]
        recorded = await member.primary.claim_layout(layout)
        if not same_place(recorded, layout):
            # Its data was placed by another layout (DSNs swapped, buckets changed): serving
            # would read and write keys on the wrong members.
            self.refuse(
                f"shard set {self.name}: member {member.name} holds data of the layout "
                f"{recorded}, not the configured {layout}; restore the config (a rebalance "
                "moves data between layouts)"
            )
            self.confirmed.add(member.name)
            return
        if self.map is None:
            await self.establish()
        if self.map is None:
            raise ShardUnavailable(
                f"shard set {self.name}: no member answers with the bucket map yet"
            )
        owner = self.map.members
        states = {
            bucket: "owned" if owner[index] == member.name else "absent"
            for bucket, index in enumerate(self.map.owners)
        }
        await member.primary.seed_states(states)
        self.confirmed.add(member.name)

    async def establish(self) -> None:
        """Read the map; with no member that answers holding one, write version 1 (the even
        map over the members the first member recorded). A rebalance writes its maps to
        every member, so a set that ever had one has it on every member that answers."""
        await self.refresh()
        if self.map is not None:
            return
        first = self.members[0]
        recorded = orjson.loads(await first.primary.claim_layout(self.layouts[first.name]))
        names = recorded.get("members") or [member.name for member in self.members]
        seeded = BucketMap.even(len(names), self.buckets, names)
        for member in self.members:
            with contextlib.suppress(ShardUnavailable):  # a member down gets it from the next
                await member.primary.write_map(seeded.version, seeded.dumps())
        await self.refresh()

    def announced(self, payload: bytes = b"") -> None:
        """A rebalance announced a map (on the cluster bus): read it now."""
        if self.map is None or int(payload or 0) > self.map.version:
            self.refresh()

    def refresh(self) -> asyncio.Task[None]:
        """Read every member's newest map (one read in flight, shared)."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read_maps())
        return self._reading

    async def _read_maps(self) -> None:
        newer_than = 0 if self.map is None else self.map.version
        texts = await asyncio.gather(
            *(member.primary.read_map(newer_than) for member in self.members),
            return_exceptions=True,
        )
        self.map_reads += 1
        found = [BucketMap.loads(t) for t in texts if isinstance(t, str)]
        if found:
            newest = max(found, key=lambda m: m.version)
            if self.map is None or newest.version > self.map.version:
                self.adopt(newest)
        for error in texts:
            if isinstance(error, BaseException) and not isinstance(error, ShardUnavailable):
                raise error

    def adopt(self, newest: BucketMap) -> None:
        unknown = [name for name in newest.members if name not in self.by_name]
        if unknown:
            self.refuse(
                f"shard set {self.name}: the bucket map (version {newest.version}) gives "
                f"buckets to {', '.join(unknown)}, not in the config; add them back"
            )
            return
        if self.map is not None:
            log.info("shard set %s: bucket map version %d", self.name, newest.version)
        self.map = newest

    def refuse(self, reason: str) -> None:
        if reason != self.refusal:
            log.error("%s", reason)
        self.refusal = reason

    async def _watching(self) -> None:
        while True:
            await asyncio.sleep(MAP_POLL)
            try:
                await self.refresh()
            except Exception:  # never out of the loop
                log.exception("shard set %s: reading the bucket map failed", self.name)
