"""The rate limit's Redis keys: everything under PREFIX is its own (PluginSpec.keys)."""

PREFIX = "sn:rl:"
RATELIMIT = PREFIX  # + {scope:client digest}:algorithm:window: a limit's state
API_KEY_TIERS = PREFIX + "apikeys"  # hash: sha256(API key) → tier name
