-- KEYS: 1 run outcomes, 2 run hash, 3 run problems, 4 customer ledger, 5 tenant synced, 6 metrics outcomes,
--       7 tenant profile ids
-- ARGV: 1 customer, 2 outcome, 3 entry json, 4 is problem, 5 updated epoch-us or '', 6 ledger max,
--       7 ttl seconds, 8 now (epoch seconds, string), 9 metrics field '<tenant>|<outcome>', 10 profile id or ''
-- The newest snapshot synced moves on also when the run already has this customer's outcome: a second
-- sync of the customer in one run (two webhooks in the same minute) wrote a newer snapshot, and an older
-- one processed after it must be stale.
if ARGV[5] ~= '' then
  local current = redis.call('HGET', KEYS[5], ARGV[1])
  if (not current) or tonumber(current) < tonumber(ARGV[5]) then redis.call('HSET', KEYS[5], ARGV[1], ARGV[5]) end
end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[7], ARGV[1], ARGV[10]) end
redis.call('HINCRBY', KEYS[6], ARGV[9], 1)
redis.call('HINCRBY', KEYS[2], 'outcome:' .. ARGV[2], 1)
local completed = redis.call('HINCRBY', KEYS[2], 'completed', 1)
redis.call('HSET', KEYS[2], 'progress_at', ARGV[8])
if ARGV[4] == '1' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[3]) end
redis.call('LPUSH', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
redis.call('EXPIRE', KEYS[4], ARGV[7])
local expected = tonumber(redis.call('HGET', KEYS[2], 'expected') or '-1')
if redis.call('HGET', KEYS[2], 'produced') == '1' and expected >= 0 and completed >= expected then
  if redis.call('HGET', KEYS[2], 'state') ~= 'done' then
    redis.call('HSET', KEYS[2], 'state', 'done', 'finished_at', ARGV[8])
  end
end
return 1
