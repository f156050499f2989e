-- write fields into a portal's record only if it is still as the writer read it, in one step:
-- ARGV[1] names a field and ARGV[2] the value it must still hold, as stored (ARGV[1] '': no such check;
-- e.g. the refresh token a rotated pair replaces, the endpoint a redirect moves);
-- ARGV[3] the states the write applies in, space-separated (workers/portals/state.py's table; '': any,
-- a record without a state included; a record with no state field is `active`, as record.py reads it, and
-- no record at all is never written); then field, value pairs. Returns 1 if written, else 0.
if ARGV[1] ~= '' and (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
if ARGV[3] ~= '' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  local state = redis.call('HGET', KEYS[1], 'state')
  if not state or state == '' then state = 'active' end
  if not string.find(' ' .. ARGV[3] .. ' ', ' ' .. state .. ' ', 1, true) then return 0 end
end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
