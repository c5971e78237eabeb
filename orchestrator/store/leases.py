"""Liveness of running builds (leases the janitor reaps), cancel requests, and named locks."""

from __future__ import annotations

import time

import redis

from orchestrator.store.clients import StoreBase
from orchestrator.store.scripts import lua


class Leases(StoreBase):
    def renew_lease(self, build_id: int, seconds: float) -> None:
        """Mark the build as alive until now + seconds (called by the worker's heartbeat)."""
        with self.available():
            self.r.zadd(self.k.running(), {str(build_id): time.time() + seconds})

    def release_lease(self, build_id: int) -> None:
        with self.available():
            self.r.zrem(self.k.running(), str(build_id))

    def expired_leases(self, now: float | None = None) -> list[int]:
        with self.available():
            ids = self.r.zrangebyscore(self.k.running(), "-inf", now or time.time())
        return [int(i) for i in ids]

    def claim_expired(self, build_id: int, now: float | None = None) -> bool:
        """Atomically take an expired lease away (exactly one reaper wins)."""
        key = self.k.running()
        with self.available(), self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                score = pipe.zscore(key, str(build_id))
                if score is None or score > (now or time.time()):
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.zrem(key, str(build_id))
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
