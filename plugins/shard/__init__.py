"""Sharding: the `shard` route plugin (a key picks the member of a `hash` upstream pool) and
the `store:NAME` target (a JSON document store over a [shards.NAME] set: PostgreSQL
members with read replicas, or embedded SQLite ones)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from node.config import ShardMember, ShardSetSettings
from node.errors import ConfigError
from node.plugin import BuildContext, PluginSpec
from plugins.shard.documents import DocumentShard, PlacedShard, ShardUnavailable
from plugins.shard.members import MAP_CHANNEL, Member, ShardSet
from plugins.shard.router import ShardRouter, ShardSettings, build_shard_router
from plugins.shard.store import StoreTarget

log = logging.getLogger("scalenode.shard")
SET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # becomes part of a table name
PLACEHOLDER = re.compile(r"\{([^}:]+)(:[^}]*)?\}")


def table_of(set_name: str) -> str:
    return f"sn_docs_{set_name}"


def member_shards(set_name: str, settings: ShardSetSettings, member: ShardMember) -> Member:
    table = table_of(set_name)
    if not member.dsn:
        from plugins.shard.sqlite import SqliteShard

        path = Path(settings.data_dir) / set_name / f"{member.name}.sqlite3"
        return Member(member.name, SqliteShard(member.name, str(path), table=table), [])
    from plugins.shard.postgres import PostgresShard
    from plugins.shard.replicas import ReplicaSet

    pool = settings.pool

    def postgres(name: str, dsn: str, read_only: bool) -> PlacedShard:
        return PostgresShard(
            name,
            dsn,
            table=table,
            pool_min=pool.min,
            pool_max=pool.max,
            timeout=settings.timeout,
            read_only=read_only,
            write_tokens=bool(member.replicas),  # a token is for reading a replica
        )

    replicas = [
        postgres(f"{member.name}/replica{i}", dsn, True) for i, dsn in enumerate(member.replicas)
    ]
    lag = None
    if replicas:
        lag = ReplicaSet(
            member.dsn,
            list(member.replicas),
            max_lag_bytes=settings.max_lag_bytes,
            timeout=settings.timeout,
        )
    return Member(member.name, postgres(member.name, member.dsn, False), replicas, lag)


def layout_of(set_name: str, settings: ShardSetSettings, member: str) -> str:
    """What a member records of the set it belongs to and its own place in it: data written
    under another set, bucket count or member name is misplaced under this one. `members`,
    as first recorded, seeds the bucket map of a set that has none (members.ShardSet)."""
    members = [m.name for m in settings.members]
    layout = {"set": set_name, "buckets": settings.buckets, "members": members, "map": 1}
    return orjson.dumps({**layout, "member": member}).decode()


async def check_budget(
    set_name: str, settings: ShardSetSettings, members: list[Member], nodes: int
) -> None:
    """Say at start when the set's pools cannot all fit: every node (and process) opens up
    to pool.max connections to each member and replica; a server refuses beyond its
    max_connections (minus the few PostgreSQL reserves for superusers)."""
    per_server: dict[str, tuple[int, DocumentShard]] = {}
    for member in members:
        for shard in (member.primary, *member.replicas):
            dsn = getattr(shard, "dsn", "")
            if dsn:
                server = urlsplit(dsn).netloc.rpartition("@")[2]
                count, _ = per_server.get(server, (0, shard))
                per_server[server] = (count + 1, shard)
    for server, (count, shard) in per_server.items():
        try:
            limit = await shard.max_connections()  # type: ignore[attr-defined]
        except ShardUnavailable:
            continue
        needed = count * settings.pool.max * nodes
        if needed > limit:
            log.warning(
                "shard set %s: %d pool(s) on %s x pool.max %d x %d node(s) = %d connections, "
                "over its max_connections (%d): lower shards.%s.pool.max or raise the server's",
                set_name,
                count,
                server,
                settings.pool.max,
                nodes,
                needed,
                limit,
                set_name,
            )


def shard_set(ctx: BuildContext, set_name: str, path: str) -> ShardSet:
    """The members of `set_name`, one set of pools per node, started and closed with it."""
    if not SET_NAME.match(set_name):
        raise ConfigError(
            f"{path}: a store's shard set name must be 1 to 40 lowercase letters, digits or "
            f"'_', starting with a letter (it names the table), got {set_name!r}"
        )
    settings = ctx.settings.shards[set_name]

    def make() -> ShardSet:
        members = [member_shards(set_name, settings, m) for m in settings.members]
        layouts = {m.name: layout_of(set_name, settings, m.name) for m in settings.members}
        made = ShardSet(set_name, members, layouts, settings.buckets)

        async def start() -> None:
            for member in members:
                await member.primary.start()
                for replica in member.replicas:
                    await replica.start()
                if member.lag is not None:
                    await member.lag.start()
            await made.start()
            await check_budget(set_name, settings, members, ctx.resources.registry.live_count())

        async def stop() -> None:
            await made.stop()
            for member in members:
                if member.lag is not None:
                    await member.lag.close()
                for shard in (*member.replicas, member.primary):
                    await shard.close()

        ctx.on_start(start)
        ctx.on_stop(stop)
        channel = MAP_CHANNEL + set_name
        ctx.resources.bus.subscribe(channel, made.announced, made.refresh)
        # A member that is down fails its own keys only: /ready says "degraded", naming it.
        for member in settings.members:
            if member.dsn:
                ctx.tolerate_outage(f"postgres:{set_name}/{member.name}")
        return made

    return ctx.shared(f"shard.set.{set_name}", make)


def build_store_target(spec: str, path: str, ctx: BuildContext) -> StoreTarget:
    placeholders = [m[1] for m in PLACEHOLDER.finditer(ctx.route.path)]
    if len(placeholders) > 1:
        raise ConfigError(
            f"{path}: a store route has one placeholder, the document's key "
            f"(/users/{{key}}), or none (the collection, /users); got {ctx.route.path!r}"
        )
    settings = ctx.settings.shards[spec]
    return StoreTarget(
        spec,
        shard_set(ctx, spec, path),
        placeholders[0] if placeholders else None,
        timeout=settings.timeout,
        fan_out=settings.fan_out,
    )


def rebalance(argv: list[str]) -> int:
    """`run.py --role rebalance ...` (plugins/shard/rebalance_command.py), imported only then."""
    from plugins.shard.rebalance_command import main

    return main(argv)


PLUGIN = PluginSpec(
    name="shard",
    build=build_shard_router,
    after=("ratelimit", "cache", "queue"),
    before=("breaker",),
    summary="the shard key that picks a member of a hash pool (X-Shard); the store: target",
    targets={"store": build_store_target},
    commands={"rebalance": rebalance},
)

__all__ = ["PLUGIN", "ShardRouter", "ShardSettings", "StoreTarget"]
