-- KEYS: 1 customer's handled set, 2 customer's attempted set, 3 customer's event ledger, 4 run hash,
--       5 metrics events hash
-- ARGV: 1 unique id, 2 outcome, 3 entry json, 4 ledger max, 5 ttl seconds, 6 metrics field
--       '<tenant>|<metric>|<outcome>', 7 '1' when the outcome settles the event (counted once), '0' for a
--       duplicate (counted each time it is seen)
if ARGV[7] == '1' then
  if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('HINCRBY', KEYS[4], 'event:' .. ARGV[2], 1) end
redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
redis.call('EXPIRE', KEYS[3], ARGV[5])
return 1
