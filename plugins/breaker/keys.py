"""The breaker's Redis keys and bus channel (PluginSpec.keys).

+ pool|member: the member's trip reports (a hash, one field per node that tripped it, each
ending with that node's open period; read by nodes that start or reconnect meanwhile),
and the token of the one node that may send half-open trial calls.
"""

PREFIX = "sn:br:"
# "trips:", not the single-record "trip:" strings of nodes from before corroboration: in a
# cluster being upgraded, neither reads the other's keys with the wrong type.
BREAKER_TRIPS = PREFIX + "trips:"
BREAKER_PROBES = PREFIX + "probe:"
BREAKER_EVENTS = "sn:bus:breaker"  # trips and closes of upstream members
