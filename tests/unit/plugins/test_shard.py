"""plugins/shard: the shard key from path, header, query or client address; config errors."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from node.app import build_app
from node.call import Call, Reply
from node.config import Settings
from node.errors import ConfigError, Rejected
from node.forwarding import TrustedProxies
from node.schema import build
from plugins.shard import ShardRouter


async def seen_key(router: ShardRouter, call: Call) -> str | None:
    keys: list[str | None] = []

    async def target(c: Call) -> Reply:
        keys.append(c.shard)
        return Reply.text("ok")

    await router(call, target)
    return keys[0]


@pytest.mark.parametrize(
    ("key", "call"),
    [
        ("path:key", Call("GET", params={"key": "u1"})),
        ("header:X-Tenant", Call("GET", headers=CIMultiDict({"X-Tenant": "u1"}))),
        ("query:user", Call("GET", query_string="user=u1&x=2")),
        ("ip", Call("GET", client="u1")),
    ],
)
async def test_key_sources(key: str, call: Call) -> None:
    """Each key source finds the key where it says."""
    assert await seen_key(ShardRouter(key, TrustedProxies(())), call) == "u1"


async def test_ip_behind_a_trusted_proxy_is_the_forwarded_client() -> None:
    """`ip` believes X-Forwarded-For from a trusted load balancer, as the rate limiter does."""
    router = ShardRouter("ip", TrustedProxies(("10.0.0.0/8",)))
    call = Call("GET", client="10.0.0.2", headers=CIMultiDict({"X-Forwarded-For": "203.0.113.9"}))
    assert await seen_key(router, call) == "203.0.113.9"


async def test_ip_reads_every_forwarded_for_line() -> None:
    """A forged X-Forwarded-For line before the balancer's own is just another hop: the
    right-most untrusted address is the key, as for the rate limit (one function)."""
    router = ShardRouter("ip", TrustedProxies(("10.0.0.0/8",)))
    lines = CIMultiDict([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "1.2.3.4")])
    assert await seen_key(router, Call("GET", client="10.0.0.1", headers=lines)) == "1.2.3.4"


async def test_missing_key_is_a_400() -> None:
    """A call without its shard key is refused before any member is picked."""
    router = ShardRouter("header:X-Tenant", TrustedProxies(()))
    with pytest.raises(Rejected) as caught:
        await seen_key(router, Call("GET"))
    assert (caught.value.status, caught.value.code) == (400, "shard_key_missing")
    assert router.snapshot()["counters"] == {"routed": 0, "missing_key": 1}


def settings(shard: dict[str, Any], balance: str = "hash", path: str = "/i/{key}") -> Settings:
    data = {
        "upstreams": {"app": {"targets": ["http://127.0.0.1:9"], "balance": balance}},
        "routes": [{"path": path, "target": "upstream:app", "shard": shard}],
    }
    return build(Settings, data, "")


@pytest.mark.parametrize(
    ("shard", "balance", "message"),
    [
        ({"key": "cookie:x"}, "hash", "routes[0].shard.key: must be"),
        ({"key": "header"}, "hash", "routes[0].shard.key: must be"),
        ({"key": "ip:x"}, "hash", "routes[0].shard.key: must be"),
        ({"key": "path:id"}, "hash", "routes[0].shard.key: the route path '/i/{key}' has no {id}"),
        ({"key": "ip"}, "round_robin", "routes[0].shard: picks a member of a hash pool"),
        (
            {"key": "ip", "set": "main"},
            "hash",
            "routes[0].shard.set: a shard set ([shards.NAME]) is served by",
        ),
    ],
)
def test_config_errors_name_the_key(shard: dict[str, Any], balance: str, message: str) -> None:
    """Bad shard tables fail at build time with their key path."""
    with pytest.raises(ConfigError) as caught:
        build_app(settings(shard, balance), "all")
    assert str(caught.value).startswith(message)
