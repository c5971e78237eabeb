-- Close a build's log (Store.close_log): count what the writer dropped on its side, then, if the
-- cap dropped anything, make sure the log ends with its one marker line giving the count so far.
-- A later close with a higher count (a second writer of the build) deletes the earlier marker and
-- appends a new one: the stored log always holds exactly one, with the final count.
-- KEYS: 1 log stream, 2 log-cap hash (field marker: the marker's entry id, marked: its count).
-- ARGV: 1 lines, 2 bytes dropped by the writer, 3 ts, 4 step, 5 the marker's text with {lines}
-- and {bytes} in it. Returns {dropped lines, dropped bytes, 1 if this call wrote the marker}.
if tonumber(ARGV[1]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'dropped_lines', ARGV[1])
  redis.call('HINCRBY', KEYS[2], 'dropped_bytes', ARGV[2])
end
local lines = tonumber(redis.call('HGET', KEYS[2], 'dropped_lines') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[2], 'dropped_bytes') or '0')
if lines == 0 or tonumber(redis.call('HGET', KEYS[2], 'marked') or '0') == lines then
  return {lines, bytes, 0}
end
local old = redis.call('HGET', KEYS[2], 'marker')
if old then redis.call('XDEL', KEYS[1], old) end
local text = string.gsub(string.gsub(ARGV[5], '{lines}', lines), '{bytes}', bytes)
local id = redis.call('XADD', KEYS[1], '*', 'step', ARGV[4], 'stream', 'system', 'text', text, 'ts', ARGV[3])
redis.call('HSET', KEYS[2], 'marker', id, 'marked', lines)
return {lines, bytes, 1}
