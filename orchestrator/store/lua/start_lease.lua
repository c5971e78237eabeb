-- Give build ARGV[1] its lease (KEYS[1] the running zset, KEYS[2] its token): the token ARGV[2] holds
-- it until Redis's own clock + ARGV[3] seconds (Store.start_lease). Deadlines are on one clock, the
-- server's, so workers and janitors on machines whose clocks disagree judge them alike.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[3])), ARGV[1])
return 1
