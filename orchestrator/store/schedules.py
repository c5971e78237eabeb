"""Schedule state in Redis: the last slot each schedule fired for, and a lock per (schedule, slot).

Keys (under the store's prefix): ``schedule:{name}`` is a hash (last_slot, last_build, last_error,
updated_at); ``schedule:{name}:slot:{slot}`` is the SET NX lock of one slot, kept for a day. The
claim is one Lua call, so any number of workers ticking at once fire a slot exactly once.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator.store.notifications import StorePart

SLOT_LOCK_TTL = 24 * 3600
# A schedule seen for the first time records the latest slot without firing (it fires from its
# next slot on). Afterwards only a slot later than the last one fired can be claimed: missed slots
# collapse into the latest one.
_CLAIM = """
local last = redis.call('HGET', KEYS[1], 'last_slot')
if not last then
  redis.call('HSET', KEYS[1], 'last_slot', ARGV[1], 'updated_at', ARGV[4])
  return 'new'
end
if tonumber(ARGV[1]) <= tonumber(last) then return 'done' end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[3]) then return 'taken' end
redis.call('HSET', KEYS[1], 'last_slot', ARGV[1], 'updated_at', ARGV[4])
return 'claimed'
"""


class ScheduleStore(StorePart):
    """Typed access to schedule state (part of ``Store``, as ``store.schedules``)."""

    def __init__(self, client: Any, *args: Any) -> None:
        super().__init__(client, *args)
        self._claim = client.register_script(_CLAIM)

    def claim_slot(self, name: str, slot: int, owner: str) -> str:
        """'claimed' (fire it), 'new' (first sight: not fired), 'done' (fired already) or 'taken'."""
        keys = [self.k.schedule(name), self.k.schedule_slot(name, slot)]
        with self.available():
            return str(self._claim(keys=keys, args=[slot, owner, SLOT_LOCK_TTL, time.time()]))

    def record(self, name: str, build_id: int | None = None, error: str = "") -> None:
        values = {
            "last_build": "" if build_id is None else str(build_id),
            "last_error": error,
            "updated_at": time.time(),
        }
        with self.available():
            self.r.hset(self.k.schedule(name), mapping=values)

    def state(self, name: str) -> dict[str, str]:
        with self.available():
            return dict(self.r.hgetall(self.k.schedule(name)))
