-- The records of jobs applied on their first run, packed into shared hashes ("buckets"); see
-- workers/records/packed.py for the layout and why. Included at the top of every ledger script that reads or
-- writes such records: ARGV[1] is the buckets' common key prefix, ARGV[2] a generation's length in seconds,
-- ARGV[3] how many entries a bucket holds before it splits; a script's own arguments follow.
local PACK_BASE, PACK_WINDOW, PACK_SPLIT = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local PACK_GEN = math.floor(tonumber(redis.call('TIME')[1]) / PACK_WINDOW)

local function pack_key(g, what) return PACK_BASE .. ':' .. g .. ':' .. what end
local function pack_has(head, bit) return math.floor(head / bit) % 2 == 1 end

-- A job's field: a canonical (lower-case) UUID as its 16 bytes, any other id as it is. nil for an id whose field
-- could be taken for a UUID's (16 bytes long), or that is too long for a compact hash: such a job keeps its hash.
local UUID = '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$'
local function pack_field(id)
  if #id == 36 and id == string.lower(id) and string.find(id, UUID) then
    local hex = string.gsub(id, '%-', '')
    return struct.pack('>I4I4I4I4', tonumber(string.sub(hex, 1, 8), 16), tonumber(string.sub(hex, 9, 16), 16),
                       tonumber(string.sub(hex, 17, 24), 16), tonumber(string.sub(hex, 25, 32), 16))
  end
  if #id == 0 or #id == 16 or #id > 60 then return nil end
  return id
end

local PACK_NIBBLES = {['0'] = '0000', ['1'] = '0001', ['2'] = '0010', ['3'] = '0011', ['4'] = '0100',
                      ['5'] = '0101', ['6'] = '0110', ['7'] = '0111', ['8'] = '1000', ['9'] = '1001',
                      a = '1010', b = '1011', c = '1100', d = '1101', e = '1110', f = '1111'}  -- a hex digit's bits
local PACK_DEPTH = 24  -- bits of a digest a path may take: 16 million buckets, a billion records a generation
local function pack_bits(field)  -- the first PACK_DEPTH bits of the field's SHA-1, as '0' and '1'
  return (string.gsub(string.sub(redis.sha1hex(field), 1, PACK_DEPTH / 4), '.', PACK_NIBBLES))
end

-- Extendible hashing: a field's bucket in generation g is named by the bits of its digest, as many as the
-- buckets on its way were split: the split set names every split bucket's path (the root's is ''), and one
-- SMISMEMBER asks for all of the field's prefixes at once.
local function pack_bucket(g, field)
  local bits, paths = pack_bits(field), {}
  for d = 0, PACK_DEPTH do paths[d + 1] = string.sub(bits, 1, d) end
  local split, d = redis.call('SMISMEMBER', pack_key(g, 'split'), unpack(paths)), 0
  while split[d + 1] == 1 do d = d + 1 end
  local path = string.sub(bits, 1, d)
  return pack_key(g, 'b:' .. path), path
end

local function pack_split(g, bucket, path, expiry)  -- a full bucket into its two children (one more bit)
  if #path == PACK_DEPTH then return end
  local entries, children = redis.call('HGETALL', bucket), {['0'] = {}, ['1'] = {}}
  for i = 1, #entries, 2 do
    local side = children[string.sub(pack_bits(entries[i]), #path + 1, #path + 1)]
    side[#side + 1], side[#side + 2] = entries[i], entries[i + 1]
  end
  redis.call('SADD', pack_key(g, 'split'), path)
  redis.call('EXPIREAT', pack_key(g, 'split'), expiry)
  redis.call('DEL', bucket)
  for _, b in ipairs({'0', '1'}) do
    if #children[b] > 0 then
      local child = pack_key(g, 'b:' .. path .. b)
      redis.call('HSET', child, unpack(children[b]))
      redis.call('EXPIREAT', child, expiry)
      if #children[b] / 2 > PACK_SPLIT then pack_split(g, child, path .. b, expiry) end
    end
  end
end

-- Kinds, portals and workers by a 2-byte id, in a table of the generation (dropped with it, so it never grows
-- with names no longer in use): name -> id, and '\0' .. id -> name ('\0n' counts).
local function pack_intern(g, name)
  if string.byte(name, 1) == 0 then return nil end
  local names = pack_key(g, 'names')
  local id = redis.call('HGET', names, name)
  if id then return tonumber(id) end
  id = redis.call('HINCRBY', names, '\0n', 1)
  if id > 65535 then return nil end
  redis.call('HSET', names, name, id, '\0' .. struct.pack('>H', id), name)
  redis.call('EXPIREAT', names, (g + 2) * PACK_WINDOW)
  return id
end
local function pack_name(g, id)
  return redis.call('HGET', pack_key(g, 'names'), '\0' .. struct.pack('>H', id)) or ''
end

-- Times as the ledger writes them (Python's repr of seconds rounded to the millisecond) <-> integer ms.
local function pack_seconds(ms)
  local text = string.gsub(string.format('%d.%03d', math.floor(ms / 1000), ms % 1000), '0+$', '')
  if string.sub(text, -1) == '.' then text = text .. '0' end
  return text
end
local function pack_ms(text)  -- nil unless the text reads back exactly
  local n = tonumber(text or '')
  if not n or n < 0 or n >= 2 ^ 47 / 1000 then return nil end
  local ms = math.floor(n * 1000 + 0.5)
  if pack_seconds(ms) ~= text then return nil end
  return ms
end
local function pack_delta(d)  -- a difference of ms: its struct format and whether it is the wide one
  if d >= -32768 and d <= 32767 then return 'i2', 0 end
  if d >= -2147483648 and d <= 2147483647 then return 'i4', 1 end
  return nil
end

-- An order version (workers.delivery.ordering: "rank t seq", t to the microsecond).
local function pack_version_text(rank, us, seq) return string.format('%d %.6f %d', rank, us / 1000000, seq) end
local function pack_version(text)  -- rank, t in us, seq; nil unless the text reads back exactly
  local r, t, s = string.match(text, '^(%d+) (%d+%.%d+) (%d+)$')
  if not r then return nil end
  r, s = tonumber(r), tonumber(s)
  local us = math.floor(tonumber(t) * 1000000 + 0.5)
  if r > 255 or s >= 2 ^ 40 or us >= 2 ^ 53 or pack_version_text(r, us, s) ~= text then return nil end
  return r, us, s
end

-- The value, 23 bytes for a typical job with a version (widths chosen per record, the head says which): a head
-- byte (1: has a version; 2, 4: the started, updated deltas take 4 bytes, not 2; 8: the version's t is absolute,
-- 7 bytes, not 4 from created; 16, 64: its seq takes 5 or 4 bytes, not 3; 32: created is absolute, 6 bytes, not
-- 4 from the generation's start), created in ms, started - created and updated - started in ms, the ids of
-- kind, portal and worker (2 bytes each), then the version: rank (1 byte), t in us, seq. State and runs are not
-- kept: they are 'applied' and '1'.
local PACK_FIELDS = {kind = 1, portal = 1, state = 1, created = 1, updated = 1, started = 1, worker = 1, runs = 1,
                     ver = 1}
local function pack_version_bytes(ver, created)  -- the head bits and bytes of a version; nil if it cannot be
  local r, us, s = pack_version(ver)
  if not r then return nil end
  local head, ft, t, fq = 1, 'i4', us - created * 1000, 'I3'
  if t < -2147483648 or t > 2147483647 then head, ft, t = head + 8, 'I7', us end
  if s > 4294967295 then
    head, fq = head + 16, 'I5'
  elseif s > 16777215 then
    head, fq = head + 64, 'I4'
  end
  return head, struct.pack('>B' .. ft .. fq, r, t, s)
end

local function pack_encode(g, flat)  -- a record (HGETALL's reply) packed; nil when it must stay a hash
  local f = {}
  for i = 1, #flat, 2 do
    if not PACK_FIELDS[flat[i]] then return nil end
    f[flat[i]] = flat[i + 1]
  end
  if f.state ~= 'applied' or f.runs ~= '1' or not (f.kind and f.portal and f.worker) then return nil end
  local created, started, updated = pack_ms(f.created), pack_ms(f.started), pack_ms(f.updated)
  if not (created and started and updated) then return nil end
  local fs, ws = pack_delta(started - created)
  local fu, wu = pack_delta(updated - started)
  if not (fs and fu) then return nil end
  local head, tail, fc, since = 0, '', 'i4', created - g * PACK_WINDOW * 1000
  if since < -2147483648 or since > 2147483647 then fc, since, head = 'I6', created, 32 end
  if f.ver then
    local bits
    bits, tail = pack_version_bytes(f.ver, created)
    if not bits then return nil end
    head = head + bits
  end
  local kind, portal, worker = pack_intern(g, f.kind), pack_intern(g, f.portal), pack_intern(g, f.worker)
  if not (kind and portal and worker) then return nil end
  return string.char(head + 2 * ws + 4 * wu)
         .. struct.pack('>' .. fc .. fs .. fu .. 'HHH', since, started - created, updated - started, kind, portal, worker)
         .. tail
end

local function pack_decode(g, raw)  -- a packed record as HGETALL would give its hash
  local head = string.byte(raw, 1)
  local fs, fu = pack_has(head, 2) and 'i4' or 'i2', pack_has(head, 4) and 'i4' or 'i2'
  local fc = pack_has(head, 32) and 'I6' or 'i4'
  local created, ds, du, kind, portal, worker, pos = struct.unpack('>' .. fc .. fs .. fu .. 'HHH', raw, 2)
  if not pack_has(head, 32) then created = created + g * PACK_WINDOW * 1000 end
  local out = {'kind', pack_name(g, kind), 'portal', pack_name(g, portal), 'state', 'applied',
               'created', pack_seconds(created), 'started', pack_seconds(created + ds),
               'updated', pack_seconds(created + ds + du), 'worker', pack_name(g, worker), 'runs', '1'}
  if pack_has(head, 1) then
    local ft, fq = pack_has(head, 8) and 'I7' or 'i4', pack_has(head, 16) and 'I5' or 'I3'
    if pack_has(head, 64) then fq = 'I4' end
    local r, t, s = struct.unpack('>B' .. ft .. fq, raw, pos)
    if not pack_has(head, 8) then t = t + created * 1000 end
    out[#out + 1], out[#out + 2] = 'ver', pack_version_text(r, t, s)
  end
  return out
end

-- Where a job's packed record is (its bucket, field, value and generation), newest generation first; nil if none.
local function pack_find(id)
  local field = pack_field(id)
  if not field then return nil end
  for g = PACK_GEN, PACK_GEN - 1, -1 do
    local bucket = pack_bucket(g, field)
    local raw = redis.call('HGET', bucket, field)
    if raw then return bucket, field, raw, g end
  end
  return nil
end

-- Move a finished job's record (the hash at `key`) into the current generation; false when it stays a hash.
local function pack_store(key, id)
  local field = pack_field(id)
  if not field then return false end
  local value = pack_encode(PACK_GEN, redis.call('HGETALL', key))
  if not value then return false end
  local bucket, path = pack_bucket(PACK_GEN, field)
  local expiry = (PACK_GEN + 2) * PACK_WINDOW
  redis.call('HSET', bucket, field, value)
  redis.call('EXPIREAT', bucket, expiry)
  if redis.call('HLEN', bucket) > PACK_SPLIT then pack_split(PACK_GEN, bucket, path, expiry) end
  redis.call('DEL', key)
  return true
end

-- A packed record back into its hash at `key` (its job is seen again), kept `ttl` seconds; false if none.
local function pack_restore(key, id, ttl)
  local bucket, field, raw, g = pack_find(id)
  if not bucket then return false end
  redis.call('HSET', key, unpack(pack_decode(g, raw)))
  redis.call('EXPIRE', key, ttl)
  redis.call('HDEL', bucket, field)
  return true
end
