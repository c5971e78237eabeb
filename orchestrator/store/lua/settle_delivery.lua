-- Record a verified delivery's final verdict, unless its id already has one (Store.settle_delivery).
-- KEYS: 1 delivery key, 2 deliveries index, 3 deliveries counter
-- ARGV: 1 record ttl, 2 score (received_at), 3 trim the index below this score, 4 delivery id,
--       5 build key prefix, 6 n, 7..6+n verdicts answered from the record, then the record's pairs
-- Returns false when recorded, or {earlier record, its build's hash} for a redelivery of a delivery
-- whose verdict is one of the n (nothing is written then).
local n = tonumber(ARGV[6])
local prior = redis.call('HGET', KEYS[1], 'verdict')
for i = 7, 6 + n do
  if prior == ARGV[i] then
    local b = redis.call('HGET', KEYS[1], 'build_id')
    local build = {}
    if b and b ~= '' then build = redis.call('HGETALL', ARGV[5] .. b) end
    return {redis.call('HGETALL', KEYS[1]), build}
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7 + n))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
redis.call('HINCRBY', KEYS[3], redis.call('HGET', KEYS[1], 'verdict'), 1)
return false
