-- KEYS: the locks. ARGV: one holder token per key. Deletes each lock only if its holder still has it.
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then released = released + redis.call('DEL', key) end
end
return released
