-- GCRA (the leaky bucket as a meter) for one portal, on the Redis server's clock so that worker
-- clocks never matter. State is one key: the theoretical arrival time (TAT), in seconds.
--
-- KEYS[1]  the portal's TAT key
-- ARGV[1]  mode: "reserve" (take a slot, return its wait) or "full" (the portal answered 503)
-- ARGV[2]  emission interval T = 1 / rate, seconds
-- ARGV[3]  burst: requests allowed at once
-- ARGV[4]  reserve: longest wait worth taking a slot for; full: the bucket size to assume (plan burst)
--
-- Returns {granted (0|1), wait seconds as a string} and, for a granted slot, the slack: how much later
-- than its time the slot may be used before the bucket would be back to empty (the TAT after this slot,
-- less the slot's time); until then a late send costs the portal no refill. Numbers go back as strings
-- because Redis turns Lua numbers into integers.
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end

if ARGV[1] == 'full' then
  -- the server's bucket is at its threshold, and the refused request counted too ("each request increases
  -- the counter", bitrix24-facts.md 1.1): nothing may go until it has drained below our burst. Each refusal
  -- adds its own unit, so that several lanes refused together wait for all of theirs to drain: assuming
  -- the threshold alone, they came back while the server was still over it, were refused again, and each
  -- refusal filled the bucket further (a fullstart run on a loaded machine: 483 refusals)
  local full_tat = now + tonumber(ARGV[4]) * interval
  if full_tat > tat then tat = full_tat end
  tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
  return {0, string.format('%.6f', tat - (burst - 1) * interval - now)}
end

local allow_at = tat - (burst - 1) * interval
local wait = allow_at - now
if wait < 0 then wait = 0 end
if wait > tonumber(ARGV[4]) then
  return {0, string.format('%.6f', wait)}
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return {1, string.format('%.6f', wait), string.format('%.6f', tat - now - wait)}
