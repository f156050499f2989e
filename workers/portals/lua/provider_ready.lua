-- a provider is registered: drop its code (ARGV[1]) from the portal's pending list; returns how many are left
local pending = redis.call('HGET', KEYS[1], 'providers_pending')
if not pending or pending == '' then return 0 end
local left = {}
for code in string.gmatch(pending, '%S+') do
  if code ~= ARGV[1] then table.insert(left, code) end
end
redis.call('HSET', KEYS[1], 'providers_pending', table.concat(left, ' '))
return #left
