"""The rebalance plan, pure: which buckets move where so that every configured member owns
an equal share (floor or ceil of buckets/members), moving the fewest buckets (Citus's
`by_shard_count`, ../shared/reference/sharding.md §2). Moves go in batches of one source
and one target each, so a batch is fenced, copied, checked and switched alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from plugins.shard.buckets import BucketMap

BATCH = 16  # buckets fenced and copied at once: a fenced bucket's writes wait for its batch


@dataclass(frozen=True, slots=True)
class Batch:
    source: str
    target: str
    buckets: tuple[int, ...]


def quotas(current: BucketMap, members: Sequence[str]) -> dict[str, int]:
    """Each member's share; the members owning most now keep the rounding's extra buckets."""
    buckets = len(current.owners)
    counts = {name: 0 for name in members}
    for bucket in range(buckets):
        name = current.owner_name(bucket)
        if name in counts:
            counts[name] += 1
    ranked = sorted(members, key=lambda name: (-counts[name], members.index(name)))
    base, extra = divmod(buckets, len(members))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(ranked)}


def plan(current: BucketMap, members: Sequence[str], batch: int = BATCH) -> list[Batch]:
    """The fewest moves to reach `quotas`; a member no longer configured gives all away."""
    share = quotas(current, members)
    owned: dict[str, list[int]] = {name: [] for name in (*current.members, *members)}
    for bucket in range(len(current.owners)):
        owned[current.owner_name(bucket)].append(bucket)
    surplus: list[tuple[str, list[int]]] = []
    for name, buckets in owned.items():
        keep = share.get(name, 0)
        if len(buckets) > keep:
            surplus.append((name, buckets[keep:]))  # the highest buckets leave
    needs = [(name, share[name] - len(owned[name])) for name in members]
    moves: list[tuple[str, str, int]] = []
    givers = [(name, list(buckets)) for name, buckets in surplus]
    for target, need in needs:
        while need > 0 and givers:
            source, spare = givers[0]
            moves.append((source, target, spare.pop(0)))
            need -= 1
            if not spare:
                givers.pop(0)
    batches: list[Batch] = []
    for source, target, bucket in moves:
        last = batches[-1] if batches else None
        if last and (last.source, last.target) == (source, target) and len(last.buckets) < batch:
            batches[-1] = Batch(source, target, (*last.buckets, bucket))
        else:
            batches.append(Batch(source, target, (bucket,)))
    return batches


def apply_batches(current: BucketMap, batches: Sequence[Batch], version: int) -> BucketMap:
    """The map once `batches` have moved."""
    changes = {bucket: b.target for b in batches for bucket in b.buckets}
    return current.with_owners(changes, version)


def ideal_moved(buckets: int, members_before: int, members_after: int) -> float:
    """The least share of buckets (and keys) any placement must move: 1/(N+1) when one
    member joins N, |N'-N|/max(N, N') in general."""
    if not buckets:
        return 0.0
    return abs(members_after - members_before) / max(members_before, members_after)
