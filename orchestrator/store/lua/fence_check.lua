-- The fence (Store.fence_check): does the runner still hold build ARGV[1]'s lease (KEYS[1] the
-- running zset, KEYS[2] the lease token; ARGV[2] its token, "" = no lease to check; ARGV[3] = now,
-- "" = Redis's clock) and every lock KEYS[3..] (owners ARGV[4..])? "ok", or what it lost
-- ("lock:<0-based index>").
if ARGV[2] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 'the build lease was taken over' end
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not score then return 'the build lease was taken over' end
  local now = tonumber(ARGV[3])
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1e6
  end
  if tonumber(score) <= now then return 'the build lease expired' end
end
for i = 3, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 1] then return 'lock:' .. tostring(i - 3) end
end
return 'ok'
