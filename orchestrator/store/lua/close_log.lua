-- Close a build's log (Store.close_log): count what the writer dropped on its side, then, if the
-- cap dropped anything, append the one marker line saying how much (once per build: HSETNX).
-- KEYS: 1 log stream, 2 log-cap hash. ARGV: 1 lines, 2 bytes dropped by the writer, 3 ts,
-- 4 step, 5 the marker's text with {lines} and {bytes} in it.
-- Returns {dropped lines, dropped bytes, 1 if this call wrote the marker}.
if tonumber(ARGV[1]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'dropped_lines', ARGV[1])
  redis.call('HINCRBY', KEYS[2], 'dropped_bytes', ARGV[2])
end
local lines = tonumber(redis.call('HGET', KEYS[2], 'dropped_lines') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[2], 'dropped_bytes') or '0')
local wrote = 0
if lines > 0 and redis.call('HSETNX', KEYS[2], 'marked', 1) == 1 then
  local text = string.gsub(string.gsub(ARGV[5], '{lines}', lines), '{bytes}', bytes)
  redis.call('XADD', KEYS[1], '*', 'step', ARGV[4], 'stream', 'system', 'text', text, 'ts', ARGV[3])
  wrote = 1
end
return {lines, bytes, wrote}
