"""Notification records in Redis: one per (build, event, target), and the outbox of those due.

Keys (under the store's prefix): ``notify:{build_id}`` is a hash, field ``{event key}/{target}`` →
the record as JSON; ``notify:due`` is a sorted set of ``{build_id}/{field}`` scored by when the
next attempt is due. A dispatcher claims due members by moving their score a lease into the
future (one Lua call, so two dispatchers never take the same one); a dispatcher that dies
mid-send leaves its claim to expire, and another one sends it again (at least once).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.store.keys import Keys

# Records are created only once per field (HSETNX): a build that is reported finished twice (runner
# and janitor) still notifies each target once per event.
_ENQUEUE = """
local n = 0
for i = 2, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i + 2])
    n = n + 1
  end
end
return n
"""
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], m) end
return due
"""


@dataclass
class Notification:
    """One event of one build for one target, and how sending it went."""

    build_id: int
    event: str  # build.failed | deploy | gate.stopped | rollback | ...
    key: str  # the event within its build: "build", "deploy:qa", "gate.stopped:model-gate"
    target: str
    kind: str  # slack | webhook | email
    message: dict[str, Any] = field(default_factory=dict)  # what is sent, secrets already masked
    status: str = "pending"  # pending | retrying | sent | failed
    attempts: int = 0
    max_attempts: int = 5
    last_error: str = ""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    next_attempt_at: float | None = None

    @property
    def hkey(self) -> str:
        return f"{self.key}/{self.target}"

    @property
    def member(self) -> str:
        return f"{self.build_id}/{self.hkey}"

    @property
    def id(self) -> str:
        """Stable across retries: receivers may use it to drop a repeated delivery."""
        return f"{self.build_id}-{self.key}-{self.target}"

    def public(self) -> dict[str, Any]:
        """The record as the build page and the API show it (without the message body)."""
        d = asdict(self)
        del d["message"]
        d["id"] = self.id
        return d

    @classmethod
    def from_json(cls, raw: str) -> Notification:
        return cls(**json.loads(raw))


class StorePart:
    """A part of ``Store`` in a module of its own: the client, the key names (``store.keys.Keys``) and
    ``available`` (Redis connection errors → StoreUnavailable), shared with the Store."""

    def __init__(
        self, client: Any, keys: Keys, available: Callable[[], AbstractContextManager[None]]
    ) -> None:
        self.r = client
        self.k = keys
        self.available = available


class NotificationStore(StorePart):
    """Typed access to the notification records (part of ``Store``, as ``store.notifications``)."""

    def __init__(self, client: Any, *args: Any) -> None:
        super().__init__(client, *args)
        self._enqueue = client.register_script(_ENQUEUE)
        self._claim = client.register_script(_CLAIM)

    def add(self, records: Iterable[Notification], due: float | None = None) -> int:
        """Create the records that do not exist yet and make them due now; returns how many were new."""
        by_build: dict[int, list[Notification]] = {}
        for n in records:
            by_build.setdefault(n.build_id, []).append(n)
        now = time.time() if due is None else due
        created = 0
        with self.available():
            for build_id, group in by_build.items():
                args: list[Any] = [now]
                for n in group:
                    n.next_attempt_at = now
                    args += [n.hkey, json.dumps(asdict(n)), n.member]
                keys = [self.k.notifications(build_id), self.k.notifications_due()]
                created += int(self._enqueue(keys=keys, args=args))
        return created

    def claim(self, now: float, lease: float, limit: int = 20) -> list[Notification]:
        """Take up to ``limit`` due notifications for ``lease`` seconds (no other dispatcher sees them)."""
        with self.available():
            members = self._claim(keys=[self.k.notifications_due()], args=[now, now + lease, limit])
            pipe = self.r.pipeline(transaction=False)
            for m in members:
                build_id, _, fld = m.partition("/")
                pipe.hget(self.k.notifications(int(build_id)), fld)
            raws = pipe.execute()
            orphans = [m for m, raw in zip(members, raws, strict=True) if not raw]
            if orphans:
                self.r.zrem(self.k.notifications_due(), *orphans)
        return [Notification.from_json(raw) for raw in raws if raw]

    def save(self, n: Notification) -> None:
        """Write the record; keep it in the outbox while ``next_attempt_at`` is set, else remove it."""
        n.updated_at = time.time()
        with self.available():
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(self.k.notifications(n.build_id), n.hkey, json.dumps(asdict(n)))
            if n.next_attempt_at is None:
                pipe.zrem(self.k.notifications_due(), n.member)
            else:
                pipe.zadd(self.k.notifications_due(), {n.member: n.next_attempt_at})
            pipe.execute()

    def for_build(self, build_id: int) -> list[Notification]:
        """A build's notification records, oldest first."""
        with self.available():
            raw = self.r.hgetall(self.k.notifications(build_id))
        return sorted((Notification.from_json(v) for v in raw.values()), key=lambda n: (n.created_at, n.hkey))

    def due_count(self) -> int:
        with self.available():
            return int(self.r.zcard(self.k.notifications_due()))
