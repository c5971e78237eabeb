-- Create one build atomically (Store.create_build), run inside MULTI before RQ's enqueue commands.
-- KEYS: 1 global seq, 2 repo seq, 3 dedup key or '', 4 builds index, 5 ticket key,
--       6 delivery key or '', 7 deliveries index, 8 deliveries counter
-- ARGV: 1 build key prefix, 2 JSON flat list of the build's field/value pairs, 3 ticket ttl,
--       4 dedup/delivery ttl; with a delivery: 5 JSON flat list of its record's field/value pairs,
--       6 its id, 7 its score (received_at), 8 trim the index below this score,
--       9 queued reason prefix, 10 duplicate reason prefix, 11.. verdicts answered from the record
--       (when it names a build)
-- Returns {kind, build id, the build's hash as a flat list, the delivery record as a flat list}:
-- kind 1 created, 0 an existing build (duplicate), 2 the delivery's record already had a final
-- verdict (a redelivery, answered from that record; nothing written). One round trip in all.
-- The build key is derived from the new id, so it cannot be declared in KEYS (standalone Redis only).
local delivery = KEYS[6] ~= ''

local function build_hash(id)
  if not id or id == '' then return {} end
  return redis.call('HGETALL', ARGV[1] .. id)
end

if delivery then
  local verdict = redis.call('HGET', KEYS[6], 'verdict')
  local prior = redis.call('HGET', KEYS[6], 'build_id')
  for i = 11, #ARGV do
    if verdict == ARGV[i] and prior and prior ~= '' then
      return {2, tonumber(prior), build_hash(prior), redis.call('HGETALL', KEYS[6])}
    end
  end
end

local kind, id
local existing = KEYS[3] ~= '' and redis.call('GET', KEYS[3])
-- A dedup key naming a build that retention pruned (prune_builds removes it, but not one written
-- before builds recorded their dedup key) does not stop a new build.
if existing and redis.call('EXISTS', ARGV[1] .. existing) == 0 then existing = false end
if existing then
  kind, id = 0, existing
else
  kind = 1
  id = redis.call('INCR', KEYS[1])
  local number = redis.call('INCR', KEYS[2])
  redis.call('HSET', ARGV[1] .. id, 'id', id, 'number', number, unpack(cjson.decode(ARGV[2])))
  redis.call('ZADD', KEYS[4], id, id)
  if KEYS[3] ~= '' then
    redis.call('SET', KEYS[3], id, 'EX', ARGV[4])
    redis.call('HSET', ARGV[1] .. id, 'dedup_key', KEYS[3])  -- so that pruning the build removes it
  end
  redis.call('SET', KEYS[5], id, 'EX', ARGV[3])
end
local build = build_hash(tostring(id))
if not delivery then return {kind, tonumber(id), build, {}} end

local fields = {}
for j = 1, #build, 2 do fields[build[j]] = build[j + 1] end
local verdict, status, reason
if kind == 1 or fields['triggered_by'] == ARGV[6] then  -- new, or this delivery's own earlier build
  verdict, status, reason = 'queued', '202', ARGV[9] .. fields['number']
else
  verdict, status = 'duplicate', '200'
  reason = ARGV[10] .. fields['number'] .. ' (delivery ' .. (fields['triggered_by'] or '') .. ')'
end
redis.call('HSET', KEYS[6], unpack(cjson.decode(ARGV[5])))
redis.call('HSET', KEYS[6], 'verdict', verdict, 'status_code', status, 'reason', reason, 'build_id', id)
redis.call('EXPIRE', KEYS[6], ARGV[4])
redis.call('ZADD', KEYS[7], ARGV[7], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', ARGV[8])
redis.call('HINCRBY', KEYS[8], verdict, 1)
return {kind, tonumber(id), build, redis.call('HGETALL', KEYS[6])}
