-- Create one build atomically (see Store.create_build).
-- KEYS: 1 global seq, 2 repo seq, 3 dedup key or '', 4 builds index, 5 delivery key or '', 6 ticket key
-- ARGV: 1 build key prefix, 2 JSON flat list of field/value, 3 ticket ttl, 4 delivery/dedup ttl
-- Returns {created (0/1), build id, the build's hash as a flat list} (one round trip in all).
-- The build key is derived from the new id, so it cannot be declared in KEYS (standalone Redis only).
if KEYS[5] ~= '' then
  local prior = redis.call('HGET', KEYS[5], 'build_id')
  if prior and prior ~= '' then return {0, tonumber(prior), redis.call('HGETALL', ARGV[1] .. prior)} end
end
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    if KEYS[5] ~= '' then
      redis.call('HSET', KEYS[5], 'verdict', 'duplicate', 'build_id', existing, 'status_code', '200',
        'reason', 'same commit already built as build ' .. existing)
      redis.call('EXPIRE', KEYS[5], ARGV[4])
    end
    return {0, tonumber(existing), redis.call('HGETALL', ARGV[1] .. existing)}
  end
end
local id = redis.call('INCR', KEYS[1])
local number = redis.call('INCR', KEYS[2])
local bkey = ARGV[1] .. id
local flat = cjson.decode(ARGV[2])
redis.call('HSET', bkey, 'id', id, 'number', number, unpack(flat))
redis.call('ZADD', KEYS[4], id, id)
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], id, 'EX', ARGV[4]) end
redis.call('SET', KEYS[6], id, 'EX', ARGV[3])
if KEYS[5] ~= '' then
  redis.call('HSET', KEYS[5], 'verdict', 'queued', 'build_id', id, 'status_code', '202',
    'reason', 'queued as build ' .. id)
  redis.call('EXPIRE', KEYS[5], ARGV[4])
end
return {1, id, redis.call('HGETALL', bkey)}
