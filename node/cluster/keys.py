"""Every Redis key prefix and channel the node uses, in one place.

Keys that one script or one transaction touches together share a `{hash tag}`, so they
land in one slot on Redis Cluster.
"""

NODES_INDEX = "sn:{nodes}:index"  # sorted set: node name → last heartbeat (Redis time, ms)
NODE_INFO = "sn:{nodes}:node:"  # + node name: its heartbeat record, expiring with a TTL
RATELIMIT = "sn:rl:"  # + {scope:client digest}:algorithm:window: a limit's state
API_KEY_TIERS = "sn:rl:apikeys"  # hash: sha256(API key) → tier name
# The response cache (plugins/cache); nothing outside these prefixes is ever touched by it.
CACHE = "sn:cache:"
CACHE_VALUES = "sn:cache:v"  # aiocache namespace: + ":" + route digest:path?query: an entry
CACHE_LOCKS = "sn:cache:l:"  # + entry key: the token of the one node fetching it
CACHE_PATH_INDEX = "sn:cache:i:p:"  # + path: set of the entry keys stored for it (expiring)
CACHE_TAG_INDEX = "sn:cache:i:t:"  # + Cache-Tag value: set of its entry keys (expiring)
CACHE_HANDLER = "sn:cache:h"  # aiocache namespace of handler code's own values (@cached)
# Cluster bus channels (node/cluster/bus.py); pub/sub channels are cluster-wide, no slot needed.
CACHE_EVENTS = "sn:bus:cache"  # invalidations: every node drops matching L1 entries
BREAKER_EVENTS = "sn:bus:breaker"  # trips and closes of upstream members
# Breakers (plugins/breaker/shared.py): + pool|member. A trip's record, expiring when the
# member's open period ends (for nodes that start or reconnect meanwhile), and the token of
# the one node that may send half-open trial calls.
BREAKER_TRIPS = "sn:br:trip:"
BREAKER_PROBES = "sn:br:probe:"
