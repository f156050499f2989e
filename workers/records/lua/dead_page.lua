-- One page of the dead letters matching a filter, newest first, and every letter's count by reason, read inside
-- Redis in one pass (one round trip; 10,000 letters: milliseconds of the server, not 10,000 replies to parse).
-- KEYS[1]: the index; ARGV: the letters' key prefix, portal ('' = any), code ('' = any), offset, limit.
-- Returns {how many match, number of ids, id, ..., reason, count, reason, count, ...}.
local portal, code = ARGV[2], ARGV[3]
local first, last = tonumber(ARGV[4]) + 1, tonumber(ARGV[4]) + tonumber(ARGV[5])
local total, page, reasons = 0, {}, {}
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
  local fields = redis.call('HMGET', ARGV[1] .. id, 'portal', 'code')
  if fields[1] then
    reasons[fields[2]] = (reasons[fields[2]] or 0) + 1
    if (portal == '' or fields[1] == portal) and (code == '' or fields[2] == code) then
      total = total + 1
      if total >= first and total <= last then table.insert(page, id) end
    end
  end
end
local out = {total, #page}
for _, id in ipairs(page) do table.insert(out, id) end
for reason, n in pairs(reasons) do
  table.insert(out, reason)
  table.insert(out, n)
end
return out
