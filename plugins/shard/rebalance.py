"""Moving buckets between a shard set's members while the set serves: the plan (a dry run),
then per batch of buckets: fence on the source, copy, verify, switch, publish the map.

A batch's source bucket states go `owned -> moving -> moved` and the target's
`absent -> owned`; a member serves a bucket only while it is `owned` there (reads and
writes alike: plugins/shard/postgres_placement.py), so a node with a stale map is refused
and asks again, and nothing lands on a member that does not own it. The fence waits for
the writes in flight, so the copy taken under it is complete; per bucket, row counts and a
checksum of (key, etag, document) must match on both sides before the target owns it. Every
batch's switch writes map version N+1 to every member; nodes read it within MAP_POLL.

The journal (the plan and how far it got) lives in the first member's `<table>_moves`:
`resume` runs the remaining batches (each one first looks at its bucket states, so a batch
cut short anywhere is finished or redone), `rollback` undoes the switched batches by moving
them back (with the writes made since) and unfences a batch cut short before its switch.
The source's copies of moved buckets are deleted once every batch has switched."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from plugins.shard.buckets import BucketMap
from plugins.shard.members import Member, ShardSet
from plugins.shard.rebalance_plan import Batch, apply_batches, ideal_moved, plan


class MoveFailed(Exception):
    """A batch's copy does not match its source, or the journal forbids the step."""


@dataclass(frozen=True, slots=True)
class BucketCheck:
    rows: int
    digest: str


@dataclass(slots=True)
class Outcome:
    """What one run moved, for the closing report."""

    batches: int = 0
    buckets: int = 0
    rows: int = 0
    checked: list[tuple[int, BucketCheck]] = field(default_factory=list)


def canonical(doc: str) -> bytes:
    """A document as the same bytes whichever backend printed it (jsonb adds spaces)."""
    try:
        return orjson.dumps(orjson.loads(doc), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        return doc.encode()


def checks_of(rows: Sequence[Sequence[Any]], buckets: Sequence[int]) -> dict[int, BucketCheck]:
    """Per bucket: its row count and a sha256 over its rows in key order."""
    digests = {bucket: hashlib.sha256() for bucket in buckets}
    counts = dict.fromkeys(buckets, 0)
    for bucket, key, doc, etag in sorted(rows, key=lambda row: (row[0], row[1].encode())):
        digest = digests[bucket]
        for part in (key.encode(), etag.encode(), canonical(doc)):
            digest.update(len(part).to_bytes(4, "big") + part)
        counts[bucket] += 1
    return {b: BucketCheck(counts[b], digests[b].hexdigest()[:16]) for b in buckets}


class Rebalancer:
    """Rebalances one started ShardSet (its members confirmed); `say` prints a line."""

    def __init__(
        self,
        shard_set: ShardSet,
        say: Callable[[str], None] = print,
        announce: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.set = shard_set
        self.say = say
        self.announce = announce  # tells the nodes of a new map version (the cluster bus)
        self.journal_member = shard_set.members[0]

    # -- the plan ------------------------------------------------------------------------

    def current(self) -> BucketMap:
        if self.set.map is None:
            raise MoveFailed(f"shard set {self.set.name}: no member answers with its map")
        return self.set.map

    def planned(self) -> list[Batch]:
        return plan(self.current(), [member.name for member in self.set.members])

    async def sizes(self) -> dict[int, tuple[int, int]]:
        """bucket -> (rows, bytes) on its current owner."""
        found: dict[int, tuple[int, int]] = {}
        for name, buckets in self.set.owned().items():
            if buckets:
                found.update(await self.primary(name).bucket_sizes(buckets))
        return found

    async def describe(self, batches: Sequence[Batch]) -> None:
        """Print the plan: each batch, the totals against the ideal, the balance after."""
        current = self.current()
        sizes = await self.sizes()
        total_rows = sum(rows for rows, _ in sizes.values())
        total = len(current.owners)
        before = len(set(current.owners))
        after = len(self.set.members)
        moved_rows = moved_bytes = 0
        for batch in batches:
            rows = sum(sizes.get(b, (0, 0))[0] for b in batch.buckets)
            size = sum(sizes.get(b, (0, 0))[1] for b in batch.buckets)
            moved_rows, moved_bytes = moved_rows + rows, moved_bytes + size
            self.say(
                f"  {batch.source} -> {batch.target}: buckets {spans(batch.buckets)} "
                f"({len(batch.buckets)}), {rows} rows, {size} bytes"
            )
        moved = sum(len(batch.buckets) for batch in batches)
        ideal = ideal_moved(total, before, after)
        self.say(
            f"move {moved}/{total} buckets ({moved / total:.2%}; ideal {ideal:.2%} = "
            f"1/{after}), {moved_rows}/{total_rows} rows "
            f"({moved_rows / max(total_rows, 1):.2%}), {moved_bytes} bytes, "
            f"in {len(batches)} batch(es)"
        )
        future = apply_batches(current, batches, current.version + 1)
        shares = {m.name: 0 for m in self.set.members}
        for bucket in range(total):
            shares[future.owner_name(bucket)] += 1
        self.say("after: " + ", ".join(f"{name} {n} buckets" for name, n in shares.items()))

    # -- the journal ---------------------------------------------------------------------

    async def journal(self) -> dict[str, Any] | None:
        text = await self.journal_member.primary.read_journal()
        return None if text is None else orjson.loads(text)

    async def write_journal(self, journal: dict[str, Any]) -> None:
        await self.journal_member.primary.write_journal(orjson.dumps(journal).decode())

    # -- running it ----------------------------------------------------------------------

    async def apply(self) -> Outcome:
        """Start a new move (refused while one is unfinished: resume or roll it back)."""
        journal = await self.journal()
        if journal is not None and journal["state"] == "moving":
            raise MoveFailed(
                f"move {journal['id']} is unfinished ({journal['done']}/"
                f"{len(journal['batches'])} batches): --resume or --rollback it"
            )
        batches = self.planned()
        journal = {
            "id": secrets.token_hex(4),
            "state": "moving",
            "before": self.current().dumps(),
            "batches": [[b.source, b.target, list(b.buckets)] for b in batches],
            "done": 0,
        }
        await self.write_journal(journal)
        return await self.run(journal)

    async def resume(self) -> Outcome:
        journal = await self.journal()
        if journal is None or journal["state"] != "moving":
            raise MoveFailed("no unfinished move to resume")
        self.say(f"resuming move {journal['id']} at batch {journal['done'] + 1}")
        return await self.run(journal)

    async def run(self, journal: dict[str, Any]) -> Outcome:
        outcome = Outcome()
        batches = [Batch(s, t, tuple(b)) for s, t, b in journal["batches"]]
        for i in range(journal["done"], len(batches)):
            await self.move(batches[i], outcome)
            journal["done"] = i + 1
            await self.write_journal(journal)
        for batch in batches:  # every batch switched: the sources' copies go
            await self.primary(batch.source).drop_rows(batch.buckets)
        journal["state"] = "done"
        await self.write_journal(journal)
        return outcome

    async def rollback(self) -> Outcome:
        """Undo an unfinished move: switched batches move back, a fenced one is unfenced."""
        journal = await self.journal()
        if journal is None or journal["state"] != "moving":
            raise MoveFailed("no unfinished move to roll back")
        outcome = Outcome()
        batches = [Batch(s, t, tuple(b)) for s, t, b in journal["batches"]]
        upto = min(journal["done"], len(batches) - 1)
        for batch in reversed(batches[: upto + 1]):
            source, target = self.primary(batch.source), self.primary(batch.target)
            target_states = await target.bucket_states()
            if any(target_states.get(b) == "owned" for b in batch.buckets):
                await self.move(Batch(batch.target, batch.source, batch.buckets), outcome)
                await target.drop_rows(batch.buckets)
            else:
                await source.set_states(batch.buckets, "owned")
                await target.drop_rows(batch.buckets)
        journal["state"] = "rolled_back"
        await self.write_journal(journal)
        self.say(f"rolled back move {journal['id']}")
        return outcome

    async def move(self, batch: Batch, outcome: Outcome) -> None:
        """One batch: fence, copy, verify, switch; a batch found half done is finished."""
        source, target = self.primary(batch.source), self.primary(batch.target)
        buckets = list(batch.buckets)
        source_states = await source.bucket_states()
        target_states = await target.bucket_states()
        if not all(target_states.get(b) == "owned" for b in buckets):
            await source.set_states(buckets, "moving")  # waits for the writes in flight
            rows = await source.export(buckets)
            await target.replace_rows(buckets, rows)
            copied = await target.export(buckets)
            theirs, ours = checks_of(rows, buckets), checks_of(copied, buckets)
            if theirs != ours:
                wrong = [b for b in buckets if theirs[b] != ours[b]]
                raise MoveFailed(f"buckets {wrong}: the copy on {batch.target} differs")
            await target.set_states(buckets, "owned")
            outcome.rows += len(rows)
            outcome.checked.extend(sorted(ours.items()))
            await self.publish(batch)
        elif not all(source_states.get(b) == "moved" for b in buckets):
            await self.publish(batch)  # the switch was cut short after the target took over
        await source.set_states(buckets, "moved")
        outcome.batches += 1
        outcome.buckets += len(buckets)
        self.say(
            f"  moved {batch.source} -> {batch.target}: buckets {spans(batch.buckets)}, "
            f"checked (rows, checksum) on both sides"
        )

    async def publish(self, batch: Batch) -> None:
        """Map version N+1 with the batch's buckets on its target, on every member (the
        target first: it is the one a refreshed node asks)."""
        await self.set.refresh()
        current = self.current()
        if all(current.owner_name(b) == batch.target for b in batch.buckets):
            return
        moved = apply_batches(current, [batch], current.version + 1)
        ordered = sorted(self.set.members, key=lambda m: m.name != batch.target)
        for member in ordered:
            await member.primary.write_map(moved.version, moved.dumps())
        self.set.adopt(moved)
        if self.announce is not None:
            await self.announce(moved.version)

    def primary(self, name: str) -> Any:
        member: Member = self.set.by_name[name]
        return member.primary


def spans(buckets: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> '1-3,7'."""
    parts: list[str] = []
    start = prev = None
    for bucket in sorted(buckets):
        if prev is not None and bucket == prev + 1:
            prev = bucket
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if start != prev else f"{start}")
        start = prev = bucket
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(parts)
