-- A lost job's message was published again (the reconciler; a dead worker's message back in the queue): queued
-- again, in the open index, with the event. A job that had been applied gets its packed record back first
-- (its worker may have died between the outcome and the acknowledgement).
-- KEYS: the record, its events, the open index. ARGV (after packed.lua's three): now, job id, the event, ttl.
if redis.call('EXISTS', KEYS[1]) == 0 then pack_restore(KEYS[1], ARGV[5], ARGV[7]) end
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('RPUSH', KEYS[2], ARGV[6])
redis.call('LTRIM', KEYS[2], -50, -1)
return 1
