"""The breaker's Redis keys and bus channel (PluginSpec.keys).

+ pool|member: a trip's record, expiring when the member's open period ends (for nodes
that start or reconnect meanwhile), and the token of the one node that may send
half-open trial calls.
"""

PREFIX = "sn:br:"
BREAKER_TRIPS = PREFIX + "trip:"
BREAKER_PROBES = PREFIX + "probe:"
BREAKER_EVENTS = "sn:bus:breaker"  # trips and closes of upstream members
