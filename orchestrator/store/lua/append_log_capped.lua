-- Append log lines under the build's cap (Store.append_log_capped), atomically across writers.
-- KEYS: 1 log stream, 2 log-cap hash (bytes, dropped_lines, dropped_bytes, marked)
-- ARGV: 1 cap in bytes (0: none), 2 ts, then 3 per line: step, stream, text
-- Lines are added while the log's text stays within the cap; from the first line that does not
-- fit, every later line is dropped and counted (no gaps filled later: the log stays a prefix).
-- Returns {lines added, lines dropped}.
local cap = tonumber(ARGV[1])
local size = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
local capped = redis.call('HEXISTS', KEYS[2], 'dropped_lines') == 1
local added, dropped, dropped_bytes = 0, 0, 0
for i = 3, #ARGV, 3 do
  local n = string.len(ARGV[i + 2])
  if not capped and (cap == 0 or size + n <= cap) then
    redis.call('XADD', KEYS[1], '*', 'step', ARGV[i], 'stream', ARGV[i + 1], 'text', ARGV[i + 2], 'ts', ARGV[2])
    size = size + n
    added = added + 1
  else
    capped = true
    dropped, dropped_bytes = dropped + 1, dropped_bytes + n
  end
end
redis.call('HSET', KEYS[2], 'bytes', size)
if capped then
  redis.call('HINCRBY', KEYS[2], 'dropped_lines', dropped)
  redis.call('HINCRBY', KEYS[2], 'dropped_bytes', dropped_bytes)
end
return {added, dropped}
