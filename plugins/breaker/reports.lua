-- The live trip reports of a member (see report.lua): a flat list of node, ms left,
-- level, for each report whose period has not ended by Redis's clock.
-- KEYS[1] the member's trip key.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #fields, 2 do
  local until_ms, level = string.match(fields[i + 1], '^(%d+) (%d+)$')
  if until_ms and tonumber(until_ms) > now_ms then
    live[#live + 1] = fields[i]
    live[#live + 1] = tonumber(until_ms) - now_ms
    live[#live + 1] = tonumber(level)
  end
end
return live
