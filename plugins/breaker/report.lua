-- Record one node's trip report of a member: a hash field per node, "<until ms> <level>",
-- timed by Redis's own clock (the nodes' clocks are never compared). The hash lives as
-- long as its longest report. KEYS[1] the member's trip key; ARGV[1] the node,
-- ARGV[2] its open period in ms, ARGV[3] the trip's level.
local now = redis.call('TIME')
local ms = tonumber(ARGV[2])
local until_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ms
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %d', until_ms, tonumber(ARGV[3])))
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('PEXPIRE', KEYS[1], ms)
end
return 1
