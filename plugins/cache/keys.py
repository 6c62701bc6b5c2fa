"""The response cache's Redis keys and bus channel: nothing outside PREFIX (and its
channel) is ever touched by it (PluginSpec.keys)."""

PREFIX = "sn:cache:"
CACHE = PREFIX
CACHE_VALUES = PREFIX + "v"  # aiocache namespace: + ":" + route digest:path?query: an entry
CACHE_LOCKS = PREFIX + "l:"  # + entry key: the token of the one node fetching it
CACHE_PATH_INDEX = PREFIX + "i:p:"  # + path: set of the entry keys stored for it (expiring)
CACHE_TAG_INDEX = PREFIX + "i:t:"  # + Cache-Tag value: set of its entry keys (expiring)
CACHE_HANDLER = PREFIX + "h"  # aiocache namespace of handler code's own values (@cached)
# Pub/sub channels are cluster-wide, no slot needed: invalidations, every node drops
# matching L1 entries.
CACHE_EVENTS = "sn:bus:cache"
