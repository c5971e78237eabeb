-- Prune the logs of kept builds (Store.prune_logs): the build stays, its log stream goes and the
-- build records why (field log_pruned). KEYS: 2 per candidate: build hash, log stream.
-- ARGV: JSON list of the final statuses, then 1 per candidate: the reason.
-- Skips a build that is gone or not finished. Returns the number of logs pruned.
local final = {}
for _, s in ipairs(cjson.decode(ARGV[1])) do final[s] = true end
local n = 0
for i = 1, #KEYS, 2 do
  local status = redis.call('HGET', KEYS[i], 'status')
  if status and final[status] then
    redis.call('UNLINK', KEYS[i + 1])
    redis.call('HSET', KEYS[i], 'log_pruned', ARGV[(i + 1) / 2 + 1])
    n = n + 1
  end
end
return n
