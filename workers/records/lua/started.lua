-- A worker picked the job up: running, one more run; creates the record (and counts it in the portal's backlog)
-- when no producer recorded it. A job seen again after it was applied gets its packed record back first, so it
-- is not taken for a new one. KEYS: the record, its events, the open index, the portal's backlog. ARGV (after
-- packed.lua's three): now, job id, kind, portal, the event, worker, the record's ttl.
-- Returns {first sight (0/1), created, runs, version}.
local now, id = ARGV[4], ARGV[5]
if redis.call('EXISTS', KEYS[1]) == 0 then pack_restore(KEYS[1], id, ARGV[10]) end
local first = redis.call('HSETNX', KEYS[1], 'created', now)
if first == 1 then
  redis.call('INCR', KEYS[4])
end
redis.call('ZADD', KEYS[3], now, id)
redis.call('HSET', KEYS[1], 'kind', ARGV[6], 'portal', ARGV[7], 'state', 'running', 'updated', now,
           'started', now, 'worker', ARGV[9])
local runs = redis.call('HINCRBY', KEYS[1], 'runs', 1)
redis.call('RPUSH', KEYS[2], ARGV[8])
redis.call('LTRIM', KEYS[2], -50, -1)
local known = redis.call('HMGET', KEYS[1], 'created', 'ver')
return {first, known[1], runs, known[2] or ''}
