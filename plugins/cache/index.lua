-- Add an entry key to an index set and make the set live at least as long as the entry,
-- so indexes expire with what they point at instead of growing forever.
-- KEYS[1] index set; ARGV[1] entry key; ARGV[2] the entry's lifetime in ms.
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
