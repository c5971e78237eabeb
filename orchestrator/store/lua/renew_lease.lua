-- Extend build ARGV[1]'s lease (KEYS[1] the running zset, KEYS[2] its token) to Redis's clock +
-- ARGV[3] seconds, only if ARGV[2] is its holder's token and the lease has not expired: a runner that
-- stalled past its lease, or whose lease the janitor took, is refused (Store.renew_lease).
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then return 0 end
redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[3])), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
