"""What the benchmarks measure: the node's routes (TOML), and the scenarios and ratios
run.py reports (instructions.py counts the same routes).

To benchmark a new route: add its [[routes]] table to NODE_ROUTES and a Scenario (and a
Ratio if it has a baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

from report import Ratio
from servers import HELLO_BODY, UPSTREAM_BODY

# The node's routes ($upstream_port is the origin nginx; [upstreams.origin] points at it).
NODE_ROUTES = """\
[[routes]]
path = "/hello"
methods = ["GET"]
target = "handler:node.demo:hello"

[[routes]]
path = "/proxy/{tail:.*}"
target = "upstream:origin"
strip_prefix = "/proxy"

# The hello route behind a rate limit it never reaches: the cost of counting.
[[routes]]
path = "/limited"
methods = ["GET"]
target = "handler:node.demo:hello"
ratelimit = { limit = 1000000000, window = 60, key = "ip" }

# The same limit in front of the proxy route: a gateway's usual place for it.
[[routes]]
path = "/limited-proxy/{tail:.*}"
target = "upstream:origin"
strip_prefix = "/limited-proxy"
ratelimit = { limit = 1000000000, window = 60, key = "ip" }

# The proxy route with a breaker that never trips, on a pool of its own (the same origin):
# the cost of the failover path and of the circuits' bookkeeping.
[[routes]]
path = "/guarded/{tail:.*}"
target = "upstream:guarded"
strip_prefix = "/guarded"
breaker = { open_seconds = 5 }

[upstreams.guarded]
targets = ["http://127.0.0.1:$upstream_port"]
timeout = 5.0
"""

# The same routes on a node whose rate limit counts in Redis (a private one, see build_servers).
REDIS_BACKENDS = """\
[backends]
redis = "redis://127.0.0.1:$redis_port/0"
"""


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    server: str  # Server.name
    path: str  # what wrk requests; every proxy asks the origin for /hello
    body: bytes  # the answer expected before benchmarking (proves the route is the right one)
    baseline: str | None = None  # the key this one's ratio column compares against


SCENARIOS = [
    Scenario("bare_hello", "bare aiohttp hello", "bare-hello", "/hello", HELLO_BODY),
    Scenario("node_handler", "node handler route", "node", "/hello", HELLO_BODY, "bare_hello"),
    Scenario("bare_proxy", "bare aiohttp proxy", "bare-proxy", "/hello", UPSTREAM_BODY),
    Scenario("node_proxy", "node proxy route", "node", "/proxy/hello", UPSTREAM_BODY, "bare_proxy"),
    Scenario(
        "node_breaker",
        "proxy route with breaker",
        "node",
        "/guarded/hello",
        UPSTREAM_BODY,
        "node_proxy",
    ),
    Scenario("nginx_proxy", "nginx proxy (reference)", "proxy-nginx", "/hello", UPSTREAM_BODY),
    Scenario(
        "node_limited", "rate limited, embedded", "node", "/limited", HELLO_BODY, "node_handler"
    ),
    Scenario(
        "node_limited_proxy",
        "rate limited proxy, embedded",
        "node",
        "/limited-proxy/hello",
        UPSTREAM_BODY,
        "node_proxy",
    ),
    Scenario("redis_node_hello", "handler route (Redis node)", "node-redis", "/hello", HELLO_BODY),
    Scenario(
        "redis_limited",
        "rate limited, Redis",
        "node-redis",
        "/limited",
        HELLO_BODY,
        "redis_node_hello",
    ),
]

RATIOS = [
    Ratio("node_handler", "bare_hello", "handler route / bare hello"),
    Ratio("node_proxy", "bare_proxy", "node proxy / bare proxy"),
    Ratio("node_proxy", "nginx_proxy", "node proxy / nginx proxy (reference, target >= 0.3)"),
    Ratio("node_limited", "node_handler", "rate limit (embedded) / same route without it"),
    Ratio(
        "node_limited_proxy", "node_proxy", "rate limit (embedded) / same proxy route without it"
    ),
    Ratio("node_breaker", "node_proxy", "breaker on / same proxy route without it"),
    Ratio(
        "redis_limited",
        "redis_node_hello",
        "rate limit (Redis) / same route without it (target >= 0.8)",
    ),
]


# --- The response cache (issue #4), kept apart from the scenarios above. ----------------
# An L1 hit and an L2 hit (l1_ttl = 0: every request reads Redis) of the hello handler,
# against bare aiohttp; a miss (statuses = [299]: the origin's 200 is never stored, so
# each request is a full miss: L1, L2 read, fill lock, re-read, fetch, unlock) against
# the same proxy route without the plugin.
CACHE_ROUTES = """
[[routes]]
path = "/cached/hello"
methods = ["GET"]
target = "handler:node.demo:hello"
cache = { ttl = 3600 }

[[routes]]
path = "/cached-l2/hello"
methods = ["GET"]
target = "handler:node.demo:hello"
cache = { ttl = 3600, l1_ttl = 0 }

[[routes]]
path = "/cached-miss/{tail:.*}"
target = "upstream:origin"
strip_prefix = "/cached-miss"
cache = { ttl = 30, statuses = [299] }
"""
NODE_ROUTES += CACHE_ROUTES

SCENARIOS += [
    Scenario("cache_l1", "cache L1 hit", "node", "/cached/hello", HELLO_BODY, "bare_hello"),
    Scenario(
        "cache_l2",
        "cache L2 hit (Redis)",
        "node-redis",
        "/cached-l2/hello",
        HELLO_BODY,
        "bare_hello",
    ),
    Scenario(
        "redis_node_proxy", "proxy route (Redis node)", "node-redis", "/proxy/hello", UPSTREAM_BODY
    ),
    Scenario(
        "cache_miss",
        "cache miss (Redis proxy)",
        "node-redis",
        "/cached-miss/hello",
        UPSTREAM_BODY,
        "redis_node_proxy",
    ),
]
RATIOS += [
    Ratio("cache_l1", "bare_hello", "cache L1 hit / bare hello (target >= 0.9)"),
    Ratio("cache_l2", "bare_hello", "cache L2 hit / bare hello (target >= 0.6)"),
    Ratio("cache_miss", "redis_node_proxy", "cache miss / same proxy route without the plugin"),
]


# --- The full gateway (issue #20): a proxied route behind all three plugins, answered from
# the cache (L1 hits), on the Redis node: a Redis rate limit counted on every request, a
# breaker on the route's own pool. Its reference is nginx doing the same job: limit_req
# (a limit it never reaches) and proxy_cache hits (servers.gateway_nginx).
GATEWAY_ROUTES = """
[[routes]]
path = "/gateway/{tail:.*}"
target = "upstream:gateway"
strip_prefix = "/gateway"
ratelimit = { limit = 1000000000, window = 60, key = "ip" }
cache = { ttl = 3600 }
breaker = { open_seconds = 5 }

[upstreams.gateway]
targets = ["http://127.0.0.1:$upstream_port"]
timeout = 5.0
"""
NODE_ROUTES += GATEWAY_ROUTES

SCENARIOS += [
    Scenario(
        "nginx_gateway",
        "nginx limit_req + proxy_cache (reference)",
        "gateway-nginx",
        "/hello",
        UPSTREAM_BODY,
    ),
    Scenario(
        "node_gateway",
        "gateway: Redis rate limit + cache hit + breaker",
        "node-redis",
        "/gateway/hello",
        UPSTREAM_BODY,
        "nginx_gateway",
    ),
]
RATIOS += [
    Ratio(
        "node_gateway", "nginx_gateway", "gateway / nginx limit_req + proxy_cache (target >= 0.3)"
    ),
]
