-- KEYS: 1 the lock. ARGV: 1 holder token. Deletes the lock only if the holder still has it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
