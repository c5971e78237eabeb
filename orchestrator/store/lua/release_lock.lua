-- Delete lock KEYS[1] only if ARGV[1] still owns it (Store.release_lock).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
