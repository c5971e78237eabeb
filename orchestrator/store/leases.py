"""Liveness of running builds (leases the janitor reaps), cancel requests, and named locks.

A lease is held by a token the runner picks when it claims the build: only that token renews it,
and not once it expired or the janitor took it. A deploy checks lease and lock before every remote
change (``fence_check``), so a runner that stalled past its lease stops instead of deploying on.

Lease deadlines are on Redis's clock (``TIME``), not the worker's: with workers on several machines, a
janitor whose clock runs ahead must not reap a build whose worker is alive, nor one whose clock lags
keep a dead one. ``now`` arguments exist for tests that need to look ahead.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from orchestrator.store.clients import StoreBase
from orchestrator.store.scripts import lua


def lease_ttl_ms(seconds: float) -> int:
    """How long a lease's token key lives: it outlives its lease (the janitor deletes it when it claims
    the build); a day bounds what a build whose runner and janitor both vanished leaves behind."""
    return int(max(seconds, 0) * 1000) + 86_400_000


class Leases(StoreBase):
    def start_lease(self, build_id: int, token: str, seconds: float) -> None:
        """Give the runner that just claimed the build its lease: ``token`` holds it until now + seconds."""
        keys = [self.k.running(), self.k.lease(build_id)]
        with self.available():
            self.r.eval(
                lua("start_lease"), 2, *keys, str(build_id), token, repr(seconds), lease_ttl_ms(seconds)
            )

    def renew_lease(self, build_id: int, token: str, seconds: float) -> bool:
        """Extend the lease to now + seconds if ``token`` still holds it and it has not expired
        (the heartbeat). False once the janitor took it or it ran out: the runner is fenced."""
        with self.available():
            return bool(
                self.r.eval(
                    lua("renew_lease"),
                    2,
                    self.k.running(),
                    self.k.lease(build_id),
                    str(build_id),
                    token,
                    repr(seconds),
                    lease_ttl_ms(seconds),
                )
            )

    def fence_check(
        self, build_id: int, token: str, locks: Sequence[tuple[str, str]], now: float | None = None
    ) -> str:
        """One round trip: "ok" if ``token`` still holds the build's unexpired lease ("" = no lease to
        check) and each (lock name, owner) is still owned; else what was lost."""
        keys = [self.k.running(), self.k.lease(build_id), *(self.k.lock(n) for n, _ in locks)]
        args = [str(build_id), token, "" if now is None else repr(now), *(o for _, o in locks)]
        with self.available():
            answer = str(self.r.eval(lua("fence_check"), len(keys), *keys, *args))
        if answer.startswith("lock:"):
            return f"lost the lock {locks[int(answer[5:])][0]}"
        return answer

    def release_lease(self, build_id: int) -> None:
        with self.available(), self.r.pipeline(transaction=True) as pipe:
            pipe.zrem(self.k.running(), str(build_id))
            pipe.delete(self.k.lease(build_id))
            pipe.execute()

    def clock(self) -> float:
        """Redis's time: the clock lease deadlines are on."""
        with self.available():
            seconds, micros = self.r.time()
        return float(seconds) + micros / 1e6

    def expired_leases(self, now: float | None = None) -> list[int]:
        now = self.clock() if now is None else now
        with self.available():
            ids = self.r.zrangebyscore(self.k.running(), "-inf", now)
        return [int(i) for i in ids]

    def claim_expired(self, build_id: int, now: float | None = None) -> bool:
        """Atomically take an expired lease away (exactly one reaper wins)."""
        key = self.k.running()
        now = self.clock() if now is None else now
        with self.available(), self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                score = pipe.zscore(key, str(build_id))
                if score is None or score > now:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.zrem(key, str(build_id))
                pipe.delete(self.k.lease(build_id))  # its holder's renewals and fence checks now fail
                return bool(pipe.execute()[0])
            except redis.WatchError:
                return False

    def request_cancel(self, build_id: int) -> None:
        with self.available():
            self.r.set(self.k.cancel(build_id), "1", ex=86400)

    def cancel_requested(self, build_id: int) -> bool:
        with self.available():
            return bool(self.r.exists(self.k.cancel(build_id)))


class Locks(StoreBase):
    def acquire_lock(self, name: str, owner: str, ttl: float, build_id: int | None = None) -> bool:
        with self.available():
            ok = bool(self.r.set(self.k.lock(name), owner, nx=True, px=int(ttl * 1000)))
            if ok and build_id is not None:
                self.r.sadd(self.k.build_locks(build_id), name)
        return ok

    def renew_lock(self, name: str, owner: str, ttl: float) -> bool:
        with self.available():
            return bool(self.r.eval(lua("renew_lock"), 1, self.k.lock(name), owner, int(ttl * 1000)))

    def release_lock(self, name: str, owner: str, build_id: int | None = None) -> bool:
        with self.available():
            ok = bool(self.r.eval(lua("release_lock"), 1, self.k.lock(name), owner))
            if build_id is not None:
                self.r.srem(self.k.build_locks(build_id), name)
        return ok

    def lock_owner(self, name: str) -> str | None:
        with self.available():
            return self.r.get(self.k.lock(name))

    def release_build_locks(self, build_id: int) -> list[str]:
        """Release every lock a build holds (used when its worker is lost)."""
        with self.available():
            names = sorted(self.r.smembers(self.k.build_locks(build_id)))
        released = [n for n in names if self.release_lock(n, str(build_id), build_id)]
        with self.available():
            self.r.delete(self.k.build_locks(build_id))
        return released
