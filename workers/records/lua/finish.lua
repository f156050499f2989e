-- Move a job to a terminal state; decrement its portal's backlog and count the outcome for the portal only on
-- the first such move (a replayed job counts again when it ends again), and keep its id in the portal's list
-- of recent jobs (the last ARGV[10]). A job applied on its first run with nothing else to tell (its history:
-- queued, running) keeps no event list: its record says it all, packed into a bucket (packed.lua), or when it
-- cannot be packed as a hash for the shorter ARGV[9] seconds.
-- KEYS: the record, its events, the portal's backlog, the open index, the portal's outcomes, the payload, the
-- portal's recent jobs. ARGV (after packed.lua's three): state, now, the event, ttl, job id, ttl of an applied
-- job, how many recent jobs are kept.
local id = ARGV[8]
if redis.call('EXISTS', KEYS[1]) == 0 then pack_restore(KEYS[1], id, ARGV[7]) end
local was = redis.call('HMGET', KEYS[1], 'state', 'runs')
local state = was[1]
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'updated', ARGV[5])
redis.call('DEL', KEYS[6])
redis.call('ZREM', KEYS[4], id)
if ARGV[4] == 'applied' and was[2] == '1' and redis.call('LLEN', KEYS[2]) <= 2 then
  redis.call('DEL', KEYS[2])
  if not pack_store(KEYS[1], id) then redis.call('EXPIRE', KEYS[1], ARGV[9]) end
else
  redis.call('RPUSH', KEYS[2], ARGV[6])
  redis.call('LTRIM', KEYS[2], -50, -1)
  redis.call('EXPIRE', KEYS[2], ARGV[7])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
if state ~= 'applied' and state ~= 'dead' and state ~= 'parked' and state ~= 'superseded' then
  local n = redis.call('DECR', KEYS[3])
  if n < 0 then redis.call('SET', KEYS[3], 0) end
  redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
  redis.call('LPUSH', KEYS[7], id)
  redis.call('LTRIM', KEYS[7], 0, ARGV[10] - 1)
  return 1
end
return 0
