"""All state in Redis: builds, deliveries, logs, leases, locks, deployments.

This is the only module that knows key names. Everything is namespaced under ``prefix``.
Builds are created together with their RQ job in one MULTI/EXEC transaction (see ``create_build``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import redis

from .errors import NotFound, StoreUnavailable
from .models import Build, BuildStatus, Delivery, Deployment, StepRecord, Trigger

_LUA = (Path(__file__).parent / "create_build.lua").read_text()
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_JSON_FIELDS = {"steps", "deploys", "gate"}
_INT_FIELDS = {"id", "number", "rerun_of"}
_FLOAT_FIELDS = {"created_at", "started_at", "finished_at"}
_BUILD_FIELDS = {f.name for f in fields(Build)}
TICKET_TTL = 8 * 24 * 3600


class Keys:
    """Key names. One method per kind of key; nothing else builds a key string."""

    def __init__(self, prefix: str = "mlship") -> None:
        self.p = prefix + ":"

    def build_seq(self) -> str:
        return self.p + "seq:build"

    def repo_seq(self, repo: str) -> str:
        return self.p + f"seq:repo:{repo}"

    def build_prefix(self) -> str:
        return self.p + "build:"

    def build(self, build_id: int) -> str:
        return self.p + f"build:{build_id}"

    def build_log(self, build_id: int) -> str:
        return self.p + f"build:{build_id}:log"

    def build_locks(self, build_id: int) -> str:
        return self.p + f"build:{build_id}:locks"

    def builds(self) -> str:
        return self.p + "builds"

    def ticket(self, ticket: str) -> str:
        return self.p + f"ticket:{ticket}"

    def dedup(self, repo: str, sha: str, pipeline: str) -> str:
        return self.p + f"dedup:{repo}:{sha}:{pipeline}"

    def delivery(self, delivery_id: str) -> str:
        return self.p + f"delivery:{delivery_id}"

    def deliveries(self) -> str:
        return self.p + "deliveries"

    def running(self) -> str:
        return self.p + "running"

    def cancel(self, build_id: int) -> str:
        return self.p + f"cancel:{build_id}"

    def lock(self, name: str) -> str:
        return self.p + f"lock:{name}"

    def deployment(self, repo: str, env: str) -> str:
        return self.p + f"env:{repo}:{env}"

    def deployment_history(self, repo: str, env: str) -> str:
        return self.p + f"env:{repo}:{env}:history"

    def environments(self) -> str:
        return self.p + "environments"

    def counter(self, metric: str) -> str:
        return self.p + f"counter:{metric}"


def _encode_build_fields(values: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in values.items():
        if k in _JSON_FIELDS:
            if k == "steps":
                v = [s.to_dict() if isinstance(s, StepRecord) else s for s in v]
            out[k] = json.dumps(v)
        elif v is None:
            out[k] = ""
        else:
            out[k] = str(v)
    return out


def _decode_build(h: dict[str, str]) -> Build:
    kw: dict[str, Any] = {}
    for k, v in h.items():
        if k not in _BUILD_FIELDS:
            continue
        if k in _JSON_FIELDS:
            val = json.loads(v) if v else ([] if k == "steps" else {})
            kw[k] = [StepRecord.from_dict(s) for s in val] if k == "steps" else val
        elif k in _INT_FIELDS:
            kw[k] = int(v) if v else None
        elif k in _FLOAT_FIELDS:
            kw[k] = float(v) if v else None
        elif k == "status":
            kw[k] = BuildStatus(v)
        else:
            kw[k] = v
    return Build(**kw)


class Store:
    """Typed access to the orchestrator's Redis state."""

    def __init__(self, client: redis.Redis, prefix: str = "mlship", delivery_ttl_days: float = 8.0) -> None:
        # redis-py's stubs type every reply as bytes | str; this class is the typed facade over it.
        self.r: Any = client
        self.k = Keys(prefix)
        self.delivery_ttl = int(delivery_ttl_days * 86400)
        self._create = client.register_script(_LUA)
        self._release = client.register_script(_RELEASE_LOCK)
        self._renew = client.register_script(_RENEW_LOCK)

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> Store:
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=5.0,
            health_check_interval=10,
        )
        return cls(client, **kw)

    @contextmanager
    def available(self) -> Iterator[None]:
        """Turn Redis connection failures into StoreUnavailable (→ 503)."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError) as exc:
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc

    def ping(self) -> bool:
        with self.available():
            return bool(self.r.ping())

    # -- builds ---------------------------------------------------------------------------------

    def create_build(
        self,
        trigger: Trigger,
        *,
        pipeline: str,
        triggered_by: str,
        enqueue: Callable[[Any, str], None],
        rerun_of: int | None = None,
        delivery: Delivery | None = None,
        dedup: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> tuple[Build, bool]:
        """Create build #N and its queue job atomically; return (build, created).

        ``extra`` sets further initial fields (e.g. pipeline_yaml, image, deploys for promote/rollback).
        ``enqueue(pipe, ticket)`` adds the job to the MULTI pipeline. The Lua script assigns gap-free
        numbers, refuses duplicates (same repo, sha, pipeline; or same delivery id) and marks the
        delivery queued, so no crash between steps can leave a build without a job or vice versa.
        A duplicate still enqueues a job whose ticket resolves to nothing; the worker drops it.
        """
        unknown = set(extra or {}) - _BUILD_FIELDS
        if unknown:
            raise ValueError(f"unknown build fields {sorted(unknown)}")
        ticket = uuid.uuid4().hex
        now = time.time()
        values = {
            "repo": trigger.repo, "sha": trigger.sha, "ref": trigger.ref, "branch": trigger.branch,
            "trigger": trigger.kind, "status": str(BuildStatus.QUEUED), "created_at": now,
            "author": trigger.author, "message": trigger.message, "url": trigger.url,
            "triggered_by": triggered_by, "rerun_of": rerun_of, "steps": [], **(extra or {}),
        }
        flat = [x for kv in _encode_build_fields(values).items() for x in kv]
        dedup_key = self.k.dedup(trigger.repo, trigger.sha, pipeline) if dedup else ""
        delivery_key = self.k.delivery(delivery.id) if delivery else ""
        with self.available():
            pipe = self.r.pipeline(transaction=True)
            pipe.multi()
            # EVAL, not the registered script: in a pipeline that would cost a SCRIPT EXISTS round trip
            # first; EVAL of a cached script is cheap and can never fail with NOSCRIPT inside MULTI.
            keys = [self.k.build_seq(), self.k.repo_seq(trigger.repo), dedup_key, self.k.builds(),
                    delivery_key, self.k.ticket(ticket)]
            pipe.eval(_LUA, len(keys), *keys, self.k.build_prefix(), json.dumps(flat), TICKET_TTL,
                      self.delivery_ttl)
            enqueue(pipe, ticket)
            result = pipe.execute()
        created, build_id = int(result[0][0]), int(result[0][1])
        raw = result[0][2] if len(result[0]) > 2 else None  # the build's hash, read in the same script
        if raw:
            return _decode_build(dict(zip(raw[::2], raw[1::2], strict=True))), bool(created)
        return self.get_build(build_id), bool(created)

    def resolve_ticket(self, ticket: str) -> int | None:
        with self.available():
            v = self.r.get(self.k.ticket(ticket))
        return int(v) if v else None

    def get_build(self, build_id: int) -> Build:
        with self.available():
            h = self.r.hgetall(self.k.build(build_id))
        if not h:
            raise NotFound(f"build {build_id} does not exist", build=build_id)
        return _decode_build(h)

    def update_build(self, build_id: int, **values: Any) -> None:
        unknown = set(values) - _BUILD_FIELDS
        if unknown:
            raise ValueError(f"unknown build fields {sorted(unknown)}")
        with self.available():
            self.r.hset(self.k.build(build_id), mapping=_encode_build_fields(values))

    def set_status_if(self, build_id: int, expected: Iterable[BuildStatus], **values: Any) -> bool:
        """Update a build only if its status is one of ``expected`` (optimistic, race-free)."""
        key = self.k.build(build_id)
        allowed = {str(s) for s in expected}
        with self.available(), self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "status") not in allowed:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping=_encode_build_fields(values))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def list_builds(
        self, offset: int = 0, limit: int = 50, status: str | None = None, branch: str | None = None,
        repo: str | None = None,
    ) -> tuple[list[Build], int]:
        """Newest first; filters applied in order. Returns (page, total matching)."""
        with self.available():
            ids = self.r.zrevrange(self.k.builds(), 0, -1)
            if not (status or branch or repo):
                page_ids = ids[offset: offset + limit]
                return [b for b in self._get_many(page_ids)], len(ids)
            matched: list[Build] = []
            for chunk_start in range(0, len(ids), 200):
                for b in self._get_many(ids[chunk_start: chunk_start + 200]):
                    if ((status is None or str(b.status) == status) and (branch is None or b.branch == branch)
                            and (repo is None or b.repo == repo)):
                        matched.append(b)
            return matched[offset: offset + limit], len(matched)

    def _get_many(self, ids: list[str]) -> list[Build]:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.k.build(int(i)))
        return [_decode_build(h) for h in pipe.execute() if h]

    def latest_build_id(self) -> int:
        with self.available():
            v = self.r.get(self.k.build_seq())
        return int(v) if v else 0

    # -- logs -----------------------------------------------------------------------------------

    def append_log(self, build_id: int, lines: Iterable[tuple[str, str, str]]) -> None:
        """Append (step, stream, text) lines to the build's log stream, in one round trip."""
        with self.available():
            pipe = self.r.pipeline(transaction=False)
            now = f"{time.time():.3f}"
            for step, stream, text in lines:
                entry = {"step": step, "stream": stream, "text": text, "ts": now}
                pipe.xadd(self.k.build_log(build_id), entry)
            pipe.execute()

    def read_log(
        self, build_id: int, after: str = "0-0", count: int = 1000, block_ms: int | None = None,
    ) -> list[tuple[str, dict[str, str]]]:
        """Log entries after stream id ``after``; with ``block_ms``, wait for new ones."""
        key = self.k.build_log(build_id)
        with self.available():
            if block_ms is None:
                return list(self.r.xrange(key, min=f"({after}" if after != "0-0" else "-", count=count))
            res = self.r.xread({key: after}, count=count, block=block_ms)
        return list(res[0][1]) if res else []

    def log_text(self, build_id: int) -> str:
        """The whole log as plain text, one line per entry."""
        out: list[str] = []
        after = "0-0"
        while True:
            batch = self.read_log(build_id, after=after, count=5000)
            if not batch:
                return "".join(out)
            for entry_id, f in batch:
                out.append(f"[{f.get('step', '')}] {f.get('text', '')}\n")
                after = entry_id

    # -- deliveries -----------------------------------------------------------------------------

    def record_delivery(self, d: Delivery) -> None:
        key = self.k.delivery(d.id)
        with self.available():
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(key, mapping={k: ("" if v is None else str(v)) for k, v in d.to_dict().items()})
            pipe.expire(key, self.delivery_ttl)
            pipe.zadd(self.k.deliveries(), {d.id: d.received_at})
            pipe.zremrangebyscore(self.k.deliveries(), "-inf", time.time() - self.delivery_ttl)
            pipe.execute()

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        with self.available():
            h = self.r.hgetall(self.k.delivery(delivery_id))
        return _decode_delivery(h) if h else None

    def list_deliveries(self, offset: int = 0, limit: int = 50) -> tuple[list[Delivery], int]:
        with self.available():
            ids = self.r.zrevrange(self.k.deliveries(), offset, offset + limit - 1)
            total = self.r.zcard(self.k.deliveries())
            pipe = self.r.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(self.k.delivery(i))
            return [_decode_delivery(h) for h in pipe.execute() if h], int(total)

    # -- webhook intake (issue 4): check-and-record and finish, one round trip each --------------

    _BEGIN_DELIVERY = """
    -- KEYS: 1 delivery key, 2 deliveries index. ARGV: 1 ttl, 2 score (received_at), 3 trim before,
    -- 4 delivery id, 5 n, 6..5+n verdicts whose record is returned instead, then field/value pairs.
    local n = tonumber(ARGV[5])
    local v = redis.call('HGET', KEYS[1], 'verdict')
    if v then
      for i = 6, 5 + n do
        if v == ARGV[i] then return redis.call('HGETALL', KEYS[1]) end
      end
    end
    redis.call('HSET', KEYS[1], unpack(ARGV, 6 + n))
    redis.call('EXPIRE', KEYS[1], ARGV[1])
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
    return false
    """
    _FINISH_DELIVERY = """
    -- KEYS: 1 delivery key, 2 deliveries index, 3 counter. ARGV: 1 ttl, 2 score, 3 id, 4 verdict, 5.. pairs
    redis.call('HSET', KEYS[1], unpack(ARGV, 5))
    redis.call('EXPIRE', KEYS[1], ARGV[1])
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
    redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
    return true
    """

    def _intake_script(self, name: str) -> Any:
        script = self.__dict__.get(name)
        if script is None:
            script = self.__dict__[name] = self.r.register_script(getattr(self, name))
        return script

    @staticmethod
    def _delivery_pairs(d: Delivery) -> list[str]:
        return [x for k, v in vars(d).items() for x in (k, "" if v is None else str(v))]

    def begin_delivery(self, d: Delivery, replay: Iterable[str] = ()) -> Delivery | None:
        """Atomically: if a record of ``d.id`` has a verdict in ``replay``, return it untouched;
        otherwise record ``d`` (as received) and return None."""
        replay = list(replay)
        with self.available():
            found = self._intake_script("_BEGIN_DELIVERY")(
                keys=[self.k.delivery(d.id), self.k.deliveries()],
                args=[self.delivery_ttl, d.received_at, time.time() - self.delivery_ttl, d.id, len(replay),
                      *replay, *self._delivery_pairs(d)])
        if not found:
            return None
        return _decode_delivery(dict(zip(found[::2], found[1::2], strict=True)))

    def finish_delivery(self, d: Delivery, counter: str = "deliveries") -> None:
        """Write the delivery's final fields and count its verdict under ``counter``, in one round trip."""
        with self.available():
            self._intake_script("_FINISH_DELIVERY")(
                keys=[self.k.delivery(d.id), self.k.deliveries(), self.k.counter(counter)],
                args=[self.delivery_ttl, d.received_at, d.id, d.verdict, *self._delivery_pairs(d)])

    # -- leases, cancel -------------------------------------------------------------------------

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

    # -- locks ----------------------------------------------------------------------------------

    def acquire_lock(self, name: str, owner: str, ttl: float, build_id: int | None = None) -> bool:
        with self.available():
            ok = bool(self.r.set(self.k.lock(name), owner, nx=True, px=int(ttl * 1000)))
            if ok and build_id is not None:
                self.r.sadd(self.k.build_locks(build_id), name)
        return ok

    def renew_lock(self, name: str, owner: str, ttl: float) -> bool:
        with self.available():
            return bool(self._renew(keys=[self.k.lock(name)], args=[owner, int(ttl * 1000)]))

    def release_lock(self, name: str, owner: str, build_id: int | None = None) -> bool:
        with self.available():
            ok = bool(self._release(keys=[self.k.lock(name)], args=[owner]))
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

    # -- counters (for /metrics across processes) -------------------------------------------

    def incr_counter(self, metric: str, label: str, amount: int = 1) -> None:
        with self.available():
            self.r.hincrby(self.k.counter(metric), label, amount)

    def counters(self, metric: str) -> dict[str, int]:
        with self.available():
            return {k: int(v) for k, v in self.r.hgetall(self.k.counter(metric)).items()}

    def incr_counters(self, amounts: dict[str, dict[str, int]]) -> None:
        """Several counter increments ({metric: {label: amount}}) in one round trip (request metrics)."""
        with self.available():
            pipe = self.r.pipeline(transaction=False)
            for metric, labels in amounts.items():
                for label, amount in labels.items():
                    pipe.hincrby(self.k.counter(metric), label, amount)
            pipe.execute()

    # -- deployments ----------------------------------------------------------------------------

    def get_deployment(self, repo: str, env: str) -> Deployment | None:
        with self.available():
            raw = self.r.get(self.k.deployment(repo, env))
        return Deployment(**json.loads(raw)) if raw else None

    def set_deployment(self, dep: Deployment) -> None:
        raw = json.dumps(dep.to_dict())
        with self.available():
            pipe = self.r.pipeline(transaction=True)
            pipe.set(self.k.deployment(dep.repo, dep.environment), raw)
            pipe.lpush(self.k.deployment_history(dep.repo, dep.environment), raw)
            pipe.ltrim(self.k.deployment_history(dep.repo, dep.environment), 0, 99)
            pipe.sadd(self.k.environments(), json.dumps([dep.repo, dep.environment]))
            pipe.execute()

    def deployment_history(self, repo: str, env: str, limit: int = 20) -> list[Deployment]:
        with self.available():
            raws = self.r.lrange(self.k.deployment_history(repo, env), 0, limit - 1)
        return [Deployment(**json.loads(r)) for r in raws]

    def environments(self) -> list[tuple[str, str]]:
        with self.available():
            members = self.r.smembers(self.k.environments())
        return sorted((str(a), str(b)) for a, b in (json.loads(m) for m in members))


def _decode_delivery(h: dict[str, str]) -> Delivery:
    return Delivery(
        id=h["id"], event=h.get("event", ""), repo=h.get("repo", ""), verdict=h.get("verdict", ""),
        reason=h.get("reason", ""), build_id=int(h["build_id"]) if h.get("build_id") else None,
        status_code=int(h.get("status_code") or 0), received_at=float(h.get("received_at") or 0),
        duration_ms=float(h.get("duration_ms") or 0), action=h.get("action", ""), ref=h.get("ref", ""),
        sha=h.get("sha", ""),
    )
