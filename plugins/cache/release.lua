-- Release a fill lock only if this node still holds it (compare-and-delete): a lock that
-- expired and was taken by another node must not be deleted by the late first holder.
-- KEYS[1] lock key; ARGV[1] the holder's token. Returns 1 when released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
