-- KEYS: 1 run hash. ARGV: 1 expected, 2 now
redis.call('HSET', KEYS[1], 'expected', ARGV[1], 'produced', '1', 'produced_at', ARGV[2])
local completed = tonumber(redis.call('HGET', KEYS[1], 'completed') or '0')
if completed >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'done', 'finished_at', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'state', 'running')
end
return 1
