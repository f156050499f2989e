-- Dead letters counted by one of their fields (`code`: by reason; `portal`), read inside Redis: one round
-- trip whatever their number (10,000 letters: a few milliseconds of the server, not 10,000 replies to parse).
-- KEYS[1]: the index (a sorted set of job ids); ARGV[1]: the letters' key prefix; ARGV[2]: the field; ARGV[3..]:
-- only these values (none: every value). Returns {value, count, value, count, ...}.
local wanted = nil
if #ARGV > 2 then
  wanted = {}
  for i = 3, #ARGV do wanted[ARGV[i]] = true end
end
local counts = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local value = redis.call('HGET', ARGV[1] .. id, ARGV[2])
  if value and (not wanted or wanted[value]) then counts[value] = (counts[value] or 0) + 1 end
end
local out = {}
for value, n in pairs(counts) do
  table.insert(out, value)
  table.insert(out, n)
end
return out
