-- Job records as HGETALL gives them, a packed one unpacked (one round trip for many jobs).
-- KEYS: the records. ARGV (after packed.lua's three): their job ids, in the same order.
local out = {}
for i, key in ipairs(KEYS) do
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then
    local bucket, _, raw, g = pack_find(ARGV[3 + i])
    if bucket then flat = pack_decode(g, raw) end
  end
  out[i] = flat
end
return out
