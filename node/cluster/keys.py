"""The node's own Redis keys. Keys that one script or one transaction touches together
share a `{hash tag}`, so they land in one slot on Redis Cluster.

Each plugin owns the prefix its PluginSpec declares (`keys`, e.g. "sn:rl:"); the node
checks no two overlap, and its own keys stay under "sn:{nodes}:".
"""

NODES_INDEX = "sn:{nodes}:index"  # sorted set: node name → last heartbeat (Redis time, ms)
NODE_INFO = "sn:{nodes}:node:"  # + node name: its heartbeat record, kept for the retention
NODES_GONE = "sn:{nodes}:gone"  # sorted set: node name → when it left (SIGTERM), Redis ms
