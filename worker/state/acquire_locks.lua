-- KEYS: the locks. ARGV: 1 ttl ms, then one holder token per key. Returns, per key, 1 when the lock is
-- the holder's now (taken, or already held by that token: its message redelivered after the worker
-- that held it died, and waiting for the TTL would stall the customer for nothing), else 0.
local granted = {}
for i, key in ipairs(KEYS) do
  local token = ARGV[i + 1]
  local holder = redis.call('GET', key)
  if (not holder) or holder == token then
    redis.call('SET', key, token, 'PX', ARGV[1])
    granted[i] = 1
  else
    granted[i] = 0
  end
end
return granted
