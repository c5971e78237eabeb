-- Prune finished builds by retention (Store.prune_builds), atomically against every writer.
-- KEYS: 1 builds index, 2 environments set, 3 notifications outbox,
--       4 .. 3+E the deployment keys (current, history) of every environment the caller saw,
--       then 7 keys per candidate: build hash, log stream, locks set, cancel flag, notifications hash,
--       log-cap hash, tombstone.
-- ARGV: 1 E (number of deployment keys), 2 how many environments the caller saw, 3 tombstone ttl,
--       4 now, 5 JSON list of the final statuses, then 2 per candidate: build id, reason.
-- Returns {-1} when an environment was added since the caller listed them (it retries), else the
-- ids pruned. A candidate is skipped when its build is gone, not finished, or named by any
-- deployment record (current or history): a deploy or promote between the caller's plan and this
-- script cannot lose its build. The build's dedup key goes too when it still names this build.
local E = tonumber(ARGV[1])
if redis.call('SCARD', KEYS[2]) ~= tonumber(ARGV[2]) then return {-1} end

local protected = {}
local function protect(raw)
  local ok, rec = pcall(cjson.decode, raw)
  if ok and type(rec) == 'table' and rec['build_id'] ~= nil then protected[tostring(rec['build_id'])] = true end
end
for i = 4, 3 + E do
  if redis.call('TYPE', KEYS[i]).ok == 'list' then
    for _, raw in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do protect(raw) end
  else
    local raw = redis.call('GET', KEYS[i])
    if raw then protect(raw) end
  end
end

local final = {}
for _, s in ipairs(cjson.decode(ARGV[5])) do final[s] = true end

local pruned = {}
local c = 0
for j = 6, #ARGV, 2 do
  local id, reason = ARGV[j], ARGV[j + 1]
  local k = 3 + E + c * 7
  c = c + 1
  local build, log, locks, cancel, notify, logcap, tomb = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3],
    KEYS[k + 4], KEYS[k + 5], KEYS[k + 6], KEYS[k + 7]
  local got = redis.call('HMGET', build, 'status', 'repo', 'number', 'dedup_key')
  if got[1] and final[got[1]] and not protected[id] then
    if got[4] and got[4] ~= '' and redis.call('GET', got[4]) == id then redis.call('DEL', got[4]) end
    for _, field in ipairs(redis.call('HKEYS', notify)) do redis.call('ZREM', KEYS[3], id .. '/' .. field) end
    -- UNLINK: a 20 MB log stream is freed in the background, not inside this script
    redis.call('UNLINK', build, log, locks, cancel, notify, logcap)
    redis.call('ZREM', KEYS[1], id)
    local stone = cjson.encode({id = tonumber(id), repo = got[2], number = tonumber(got[3]),
      status = got[1], reason = reason, pruned_at = tonumber(ARGV[4])})
    redis.call('SET', tomb, stone, 'EX', ARGV[3])
    pruned[#pruned + 1] = tonumber(id)
  end
end
return pruned
