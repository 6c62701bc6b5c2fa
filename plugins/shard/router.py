"""The shard route plugin: takes a call's shard key, so a `balance = "hash"` pool picks its
member by the key (the pool's ring; `X-Shard` on the reply names the member)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from node.call import Call, Handler, Reply
from node.errors import ConfigError, Rejected
from node.forwarding import TrustedProxies
from node.plugin import BuildContext, Plugin
from node.schema import build, join, require

KEY_KINDS = ("path", "header", "query", "ip")


@dataclass(frozen=True, slots=True)
class ShardSettings:
    key: str = ""  # path:NAME | header:NAME | query:NAME | ip
    set: str | None = None  # refused: a shard set is a route's target, `store:NAME`

    def check(self, path: str) -> None:
        require(
            self.set is None,
            join(path, "set"),
            'a shard set ([shards.NAME]) is served by a route\'s target = "store:NAME"; '
            "this table picks a member of a hash pool",
        )
        kind, _, name = self.key.partition(":")
        require(
            kind in KEY_KINDS and (kind == "ip") != bool(name),
            join(path, "key"),
            f'must be "path:NAME", "header:NAME", "query:NAME" or "ip", got {self.key!r}',
        )


class ShardRouter(Plugin):
    name = "shard"

    def __init__(self, key: str, trusted: TrustedProxies) -> None:
        self.source = key
        self.kind, _, self.field = key.partition(":")
        self.trusted = trusted
        self.routed = 0
        self.missing = 0

    def key_of(self, call: Call) -> str | None:
        kind = self.kind
        if kind == "path":
            return call.params.get(self.field)
        if kind == "header":
            return call.headers.get(self.field)
        if kind == "query":
            return call.query.get(self.field)
        return self.trusted.client_of(call)

    async def __call__(self, call: Call, next: Handler) -> Reply:
        key = self.key_of(call)
        if not key:
            self.missing += 1
            raise Rejected(f"the shard key ({self.source}) is missing", code="shard_key_missing")
        self.routed += 1
        call.shard = key
        return await next(call)

    def snapshot(self) -> dict[str, Any]:
        return {
            "key": self.source,
            "counters": {"routed": self.routed, "missing_key": self.missing},
        }


def build_shard_router(table: dict[str, Any], path: str, ctx: BuildContext) -> ShardRouter:
    settings = build(ShardSettings, table, path)
    kind, _, name = ctx.route.target.partition(":")
    pool = ctx.settings.upstreams.get(name) if kind == "upstream" else None
    if pool is None or pool.balance != "hash":
        raise ConfigError(
            f"{path}: picks a member of a hash pool; the target must be upstream:NAME "
            'with balance = "hash"'
        )
    field = settings.key.partition(":")[2]
    if settings.key.startswith("path:"):
        placeholder = re.compile(r"\{" + re.escape(field) + r"(:[^}]*)?\}")
        require(
            bool(placeholder.search(ctx.route.path)),
            join(path, "key"),
            f"the route path {ctx.route.path!r} has no {{{field}}}",
        )
    return ShardRouter(settings.key, ctx.trusted)
