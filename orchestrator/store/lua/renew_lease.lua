-- Extend build ARGV[1]'s lease (KEYS[1] the running zset, KEYS[2] its token) to ARGV[4] only if
-- ARGV[2] is its holder's token and the lease has not expired (ARGV[3] = now): a runner that stalled
-- past its lease, or whose lease the janitor took, is refused (Store.renew_lease).
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
