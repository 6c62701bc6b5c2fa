"""Every Redis key prefix and channel the node uses, in one place.

Keys that one script or one transaction touches together share a `{hash tag}`, so they
land in one slot on Redis Cluster.
"""

NODES_INDEX = "sn:{nodes}:index"  # sorted set: node name → last heartbeat (Redis time, ms)
NODE_INFO = "sn:{nodes}:node:"  # + node name: its heartbeat record, expiring with a TTL
RATELIMIT = "sn:rl:"  # + {scope:client digest}:algorithm:window: a limit's state
API_KEY_TIERS = "sn:rl:apikeys"  # hash: sha256(API key) → tier name
