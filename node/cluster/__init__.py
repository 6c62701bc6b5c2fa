"""What nodes share through Redis: the one connection and its outage latch, the
auto-pipeline, the cluster bus, the node registry, the key prefixes."""
