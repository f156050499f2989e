-- One page of the dead letters matching a filter, newest first, chosen inside Redis (one round trip).
-- KEYS[1]: the index; ARGV: the letters' key prefix, portal ('' = any), code ('' = any), offset, limit.
-- Returns {how many match, id, id, ...} (at most `limit` ids, from `offset`).
local portal, code = ARGV[2], ARGV[3]
local first, last = tonumber(ARGV[4]) + 1, tonumber(ARGV[4]) + tonumber(ARGV[5])
if portal == '' and code == '' then  -- no filter: the index alone says it
  local page = redis.call('ZREVRANGE', KEYS[1], first - 1, last - 1)
  table.insert(page, 1, redis.call('ZCARD', KEYS[1]))
  return page
end
local total, page = 0, {}
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
  local fields = redis.call('HMGET', ARGV[1] .. id, 'portal', 'code')
  if fields[1] and (portal == '' or fields[1] == portal) and (code == '' or fields[2] == code) then
    total = total + 1
    if total >= first and total <= last then table.insert(page, id) end
  end
end
table.insert(page, 1, total)
return page
