-- KEYS: 1 the lock. ARGV: 1 holder token, 2 ttl ms. Returns 1 when the lock is the holder's now.
-- The same task id may take its own lock again: that is its message redelivered after the worker
-- that held it died, and waiting for the TTL would stall the customer for nothing.
local holder = redis.call('GET', KEYS[1])
if (not holder) or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
