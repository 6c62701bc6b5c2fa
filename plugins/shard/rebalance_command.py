"""`python -m plugins.shard.rebalance_command --config FILE [--set NAME] [--apply | --resume
| --rollback]`: print each shard set's plan (a dry run), or run it against the live members
(plugins/shard/rebalance.py), then prove it: per moved bucket, row counts and checksums
matched on both sides; keys moved against the ideal 1/(N+1).

A plugin's command, not a run.py role: node/ imports no plugin (tests/unit/test_layering.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from node.backends import MEMORY, scheme_of
from node.cluster.bus import ClusterBus
from node.cluster.redis import RedisConnection
from node.config import Settings, load_settings
from node.errors import BackendUnavailable, ConfigError
from plugins.shard import layout_of, member_shards
from plugins.shard.documents import ShardUnavailable
from plugins.shard.members import MAP_CHANNEL, ShardSet
from plugins.shard.rebalance import MoveFailed, Rebalancer
from plugins.shard.rebalance_plan import ideal_moved

log = logging.getLogger("scalenode.shard")


def standalone_set(set_name: str, settings: Settings) -> ShardSet:
    """The set's members (primaries only) as a node builds them, for this command."""
    shards = settings.shards[set_name]
    members = [member_shards(set_name, shards, m) for m in shards.members]
    for member in members:
        member.replicas, member.lag = [], None
    layouts = {m.name: layout_of(set_name, shards, m.name) for m in shards.members}
    return ShardSet(set_name, members, layouts, shards.buckets)


def announcer(
    set_name: str, bus: ClusterBus | None, say: Callable[[str], None]
) -> Callable[[int], Awaitable[None]] | None:
    """Publishes each new map version on the cluster bus (Redis), so nodes read it at once;
    without Redis (or while it is down) they read it on their next poll."""
    if bus is None:
        return None

    async def announce(version: int) -> None:
        try:
            await bus.publish(MAP_CHANNEL + set_name, str(version).encode())
        except BackendUnavailable as exc:
            say(f"  (could not announce map version {version} on Redis: {exc}; nodes poll)")

    return announce


async def rebalance_set(
    set_name: str, settings: Settings, mode: str, say: Callable[[str], None]
) -> bool:
    """Plan (mode "plan") or apply / resume / roll back one set; False when it failed."""
    shard_set = standalone_set(set_name, settings)
    url = settings.backends.redis
    redis = None if scheme_of(url) == MEMORY else RedisConnection(url)
    bus = None if redis is None else ClusterBus(redis)
    for member in shard_set.members:
        await member.primary.start()
    try:
        for member in shard_set.members:
            await shard_set.confirm(member)
        if shard_set.refusal is not None:
            say(f"refused: {shard_set.refusal}")
            return False
        mover = Rebalancer(shard_set, say, announcer(set_name, bus, say))
        journal = await mover.journal()
        if journal is not None and journal["state"] == "moving" and mode == "plan":
            say(
                f"move {journal['id']} is unfinished ({journal['done']}/"
                f"{len(journal['batches'])} batches): --resume or --rollback it"
            )
        before = mover.current()
        batches = mover.planned()
        say(f"shard set {set_name}: map version {before.version}, {len(shard_set.members)} members")
        if mode == "plan":
            if not batches:
                say("balanced: nothing to move")
            else:
                await mover.describe(batches)
                say("dry run: nothing moved (--apply moves it)")
            return True
        if mode == "apply" and batches:
            await mover.describe(batches)
        sizes_before = sum(rows for rows, _ in (await mover.sizes()).values())
        began = time.monotonic()
        if mode == "rollback":
            outcome = await mover.rollback()
        elif mode == "resume":
            outcome = await mover.resume()
        elif batches:
            outcome = await mover.apply()
        else:
            say("balanced: nothing to move")
            return True
        took = time.monotonic() - began
        after = mover.current()
        say(
            f"map version {after.version}: {outcome.buckets} buckets in {outcome.batches} "
            f"batch(es), {outcome.rows} rows copied, in {took:.2f} s"
        )
        say(
            f"verified: {len(outcome.checked)} buckets, row counts and checksums equal on "
            "source and target"
        )
        sizes_after = sum(rows for rows, _ in (await mover.sizes()).values())
        ideal = ideal_moved(len(after.owners), len(set(before.owners)), len(set(after.owners)))
        say(
            f"keys moved: {outcome.rows}/{max(sizes_before, 1)} "
            f"({outcome.rows / max(sizes_before, 1):.2%}; ideal {ideal:.2%}); "
            f"rows owned before {sizes_before}, after {sizes_after}"
        )
        return True
    except (MoveFailed, ShardUnavailable) as exc:
        say(f"error: {exc}")
        if mode in ("apply", "resume"):
            say("the move is journaled: --resume finishes it, --rollback undoes it")
        return False
    finally:
        await shard_set.stop()
        for member in shard_set.members:
            await member.primary.close()
        if redis is not None:
            await redis.close()


def run_rebalance(settings: Settings, mode: str, set_name: str | None) -> int:
    """The command's exit code: 0 done (or planned), 1 failed, 2 no such set."""
    names = [set_name] if set_name else list(settings.shards)
    unknown = [name for name in names if name not in settings.shards]
    if unknown or not names:
        known = ", ".join(settings.shards) or "none"
        print(f"error: no shard set {', '.join(unknown) or ''} (configured: {known})")
        return 2

    async def main() -> bool:
        results = [await rebalance_set(name, settings, mode, print) for name in names]
        return all(results)

    return 0 if asyncio.run(main()) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="run.py --role rebalance",
        description="Move shard sets' buckets onto their configured members (a dry run "
        "unless --apply).",
    )
    parser.add_argument("--config", type=Path, required=True, help="the nodes' TOML config")
    parser.add_argument("--set", help="this shard set only (default: every set)")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--apply", action="store_true", help="move the buckets")
    modes.add_argument("--resume", action="store_true", help="finish a move cut short")
    modes.add_argument("--rollback", action="store_true", help="undo a move cut short")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    # Its own lines say what it does; the log only what goes wrong.
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mode = "apply" if args.apply else "resume" if args.resume else "plan"
    return run_rebalance(settings, "rollback" if args.rollback else mode, args.set)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
