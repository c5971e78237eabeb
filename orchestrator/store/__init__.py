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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator import defaults
from orchestrator.errors import NotFound, StoreUnavailable
from orchestrator.models import Build, BuildStatus, Delivery, Deployment, StepRecord, Trigger
from orchestrator.store.notifications import NotificationStore
from orchestrator.store.schedules import ScheduleStore

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
TICKET_TTL = defaults.TICKET_TTL


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


INTAKE_TIMEOUT = defaults.INTAKE_TIMEOUT


def intake_client(url: str) -> redis.Redis:
    """The webhook intake's Redis client: fails fast instead of hanging.

    redis-py retries timeouts 10 times with backoff by default; a frozen (SIGSTOPped, swapping) Redis
    would hold a delivery for a minute. Here a timeout is final (one attempt of ``INTAKE_TIMEOUT``),
    and a connection error is retried once at once (a pooled socket that died with a Redis restart).
    The intake's single round trip is atomic, so a timed-out call either happened in full (the
    redelivery is answered from its record) or not at all (the redelivery is processed).
    """
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=1.0,
        socket_timeout=INTAKE_TIMEOUT,
        health_check_interval=10,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )


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
        # The webhook intake's client: fails fast (see intake_client); from_url sets it.
        self.intake_r: Any = client
        self.notifications = NotificationStore(client, self.k.p, self.available)
        self.schedules = ScheduleStore(client, self.k.p, self.available)

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> Store:
        # Like the intake client, but with room for XREAD blocks of up to a second: a frozen Redis
        # costs one 5 s timeout, not redis-py's default of ten retried ones.
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            health_check_interval=10,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        store = cls(client, **kw)
        store.intake_r = intake_client(url)
        return store

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
            "repo": trigger.repo,
            "sha": trigger.sha,
            "ref": trigger.ref,
            "branch": trigger.branch,
            "trigger": trigger.kind,
            "status": str(BuildStatus.QUEUED),
            "created_at": now,
            "author": trigger.author,
            "message": trigger.message,
            "url": trigger.url,
            "triggered_by": triggered_by,
            "rerun_of": rerun_of,
            "steps": [],
            **(extra or {}),
        }
        flat = [x for kv in _encode_build_fields(values).items() for x in kv]
        dedup_key = self.k.dedup(trigger.repo, trigger.sha, pipeline) if dedup else ""
        delivery_key = self.k.delivery(delivery.id) if delivery else ""
        with self.available():
            pipe = self.r.pipeline(transaction=True)
            pipe.multi()
            # EVAL, not the registered script: in a pipeline that would cost a SCRIPT EXISTS round trip
            # first; EVAL of a cached script is cheap and can never fail with NOSCRIPT inside MULTI.
            keys = [
                self.k.build_seq(),
                self.k.repo_seq(trigger.repo),
                dedup_key,
                self.k.builds(),
                delivery_key,
                self.k.ticket(ticket),
            ]
            pipe.eval(
                _LUA, len(keys), *keys, self.k.build_prefix(), json.dumps(flat), TICKET_TTL, self.delivery_ttl
            )
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
        self,
        offset: int = 0,
        limit: int = 50,
        status: str | None = None,
        branch: str | None = None,
        repo: str | None = None,
    ) -> tuple[list[Build], int]:
        """Newest first; filters applied in order. Returns (page, total matching)."""
        with self.available():
            ids = self.r.zrevrange(self.k.builds(), 0, -1)
            if not (status or branch or repo):
                page_ids = ids[offset : offset + limit]
                return [b for b in self._get_many(page_ids)], len(ids)
            # Match on the three filter fields alone (not whole builds with their steps), then load
            # only the page: a filter over thousands of builds costs milliseconds, not a second.
            want = (status, branch, repo)
            matched: list[str] = []
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                pipe = self.r.pipeline(transaction=False)
                for i in chunk:
                    pipe.hmget(self.k.build(int(i)), "status", "branch", "repo")
                for i, fields in zip(chunk, pipe.execute(), strict=True):
                    if fields[0] is not None and all(
                        w is None or w == f for w, f in zip(want, fields, strict=True)
                    ):
                        matched.append(i)
            return self._get_many(matched[offset : offset + limit]), len(matched)

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
        self,
        build_id: int,
        after: str = "0-0",
        count: int = 1000,
        block_ms: int | None = None,
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

    @staticmethod
    def _delivery_pairs(d: Delivery) -> list[str]:
        return [x for k, v in vars(d).items() for x in (k, "" if v is None else str(v))]

    # -- webhook intake, lean path: one round trip per verified delivery ------------------------
    # Every call below goes through ``intake_r`` (short timeout, no retry on timeouts), so a stopped
    # or frozen Redis turns into StoreUnavailable (503) well within GitHub's patience.

    def _intake(self, name: str) -> Any:
        script = self.__dict__.get(name)
        if script is None:
            script = self.__dict__[name] = self.intake_r.register_script(globals()[name])
        return script

    def _delivery_keys(self, d: Delivery) -> list[str]:
        return [self.k.delivery(d.id), self.k.deliveries(), self.k.counter("deliveries")]

    def _delivery_args(self, d: Delivery) -> list[Any]:
        return [self.delivery_ttl, d.received_at, time.time() - self.delivery_ttl, d.id]

    def settle_delivery(self, d: Delivery, replay: Iterable[str] = ()) -> Replay | None:
        """Record ``d`` as final (index it, count its verdict), in one round trip — unless a record of
        ``d.id`` already has a verdict in ``replay``: then nothing is written and that record (with
        its build, if any) is returned."""
        replay = list(replay)
        with self.available():
            found = self._intake("_SETTLE_DELIVERY")(
                keys=self._delivery_keys(d),
                args=[
                    *self._delivery_args(d),
                    self.k.build_prefix(),
                    len(replay),
                    *replay,
                    *self._delivery_pairs(d),
                ],
            )
        return _replay_of(found)

    def record_unverified(self, d: Delivery) -> None:
        """Record a delivery rejected before its signature was verified, only if its id has no record
        yet (an unauthenticated sender cannot overwrite a genuine record), and count it; one round trip."""
        with self.available():
            self._intake("_RECORD_UNVERIFIED")(
                keys=self._delivery_keys(d), args=[*self._delivery_args(d), *self._delivery_pairs(d)]
            )

    def intake_build(
        self,
        d: Delivery,
        trigger: Trigger,
        *,
        pipeline: str,
        job: Callable[[str], list[list[Any]]],
        replay: Iterable[str],
        queued_reason: str,
        duplicate_reason: str,
    ) -> tuple[BuildRef | None, Replay | None]:
        """A verified delivery that should build, settled in ONE atomic script (one round trip).

        In order: a record of ``d.id`` with a verdict in ``replay`` is returned untouched (no build);
        otherwise the build is created as ``create_build`` does (gap-free number, dedup by repo, sha,
        pipeline and by delivery id) together with its RQ job (``job(ticket)``: RQ's own commands,
        run only when the build is new) and the delivery's final record (verdict queued or duplicate,
        reason = ``queued_reason`` + number, or ``duplicate_reason`` + number + the first delivery).
        Build, job and verdict are one transaction; there is no intermediate state to crash in.
        Returns (build, None) with ``d`` updated from its record, or (None, the earlier answer).
        """
        ticket = uuid.uuid4().hex
        values = {
            "repo": trigger.repo,
            "sha": trigger.sha,
            "ref": trigger.ref,
            "branch": trigger.branch,
            "trigger": trigger.kind,
            "status": str(BuildStatus.QUEUED),
            "created_at": time.time(),
            "author": trigger.author,
            "message": trigger.message,
            "url": trigger.url,
            "triggered_by": d.id,
            "rerun_of": None,
            "steps": [],
        }
        flat = [x for kv in _encode_build_fields(values).items() for x in kv]
        commands = job(ticket)
        replay = list(replay)
        keys = [
            *self._delivery_keys(d),
            self.k.build_seq(),
            self.k.repo_seq(trigger.repo),
            self.k.dedup(trigger.repo, trigger.sha, pipeline),
            self.k.builds(),
            self.k.ticket(ticket),
        ]
        args: list[Any] = [
            *self._delivery_args(d),
            self.k.build_prefix(),
            json.dumps(flat),
            TICKET_TTL,
            queued_reason,
            duplicate_reason,
            len(replay),
            *replay,
        ]
        pairs = self._delivery_pairs(d)
        args += [len(pairs), *pairs, len(commands)]
        for command in commands:
            args += [len(command), *command]
        with self.available():
            found = self._intake("_INTAKE_BUILD")(keys=keys, args=args)
        if found[0] == "replay":
            return None, _replay_of(found)
        d.verdict, d.status_code, d.reason = found[1], int(found[2]), found[3]
        d.build_id = int(found[4])
        return BuildRef(d.build_id, int(found[5])), None

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

    def deployment_records(self) -> list[Deployment]:
        """Every deployment record of every environment: the current one and its history (which
        rollback and promote deploy from)."""
        envs = self.environments()
        with self.available():
            pipe = self.r.pipeline(transaction=False)
            for repo, env in envs:
                pipe.get(self.k.deployment(repo, env))
                pipe.lrange(self.k.deployment_history(repo, env), 0, -1)
            replies = pipe.execute()
        raws = [r for reply in replies for r in (reply if isinstance(reply, list) else [reply]) if r]
        return [Deployment(**json.loads(r)) for r in raws]

    def environments(self) -> list[tuple[str, str]]:
        with self.available():
            members = self.r.smembers(self.k.environments())
        return sorted((str(a), str(b)) for a, b in (json.loads(m) for m in members))


def _hash(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


@dataclass(frozen=True)
class BuildRef:
    """What an answer names of a build: its id and its number in the pipeline."""

    id: int
    number: int


@dataclass
class Replay:
    """An earlier delivery's record (and its build), found instead of processing a redelivery."""

    delivery: Delivery
    build: BuildRef | None


def _replay_of(found: Any) -> Replay | None:
    if not found:
        return None
    build = found[2] if len(found) > 2 else None
    ref = BuildRef(int(build[0]), int(build[1] or 0)) if build else None
    return Replay(_decode_delivery(_hash(found[1])), ref)


# The intake scripts (Store.settle_delivery, record_unverified, intake_build). Shared argument layout:
# KEYS 1 delivery key, 2 deliveries index, 3 deliveries counter; ARGV 1 record ttl, 2 score
# (received_at), 3 trim index before, 4 delivery id.
_INTAKE_COMMON = """
local function record(pairs, extra)
  redis.call('HSET', KEYS[1], unpack(pairs))
  if extra then redis.call('HSET', KEYS[1], unpack(extra)) end
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
end
local function prior(first)  -- ARGV[first] = n, then n verdicts answered from the record
  local n = tonumber(ARGV[first])
  local v = redis.call('HGET', KEYS[1], 'verdict')
  if v then
    for i = first + 1, first + n do
      if v == ARGV[i] then
        local rec = redis.call('HGETALL', KEYS[1])
        local b = redis.call('HGET', KEYS[1], 'build_id')
        local build = {}
        if b and b ~= '' then build = {b, redis.call('HGET', ARGV[5] .. b, 'number')} end
        return {'replay', rec, build}
      end
    end
  end
  return nil
end
"""
# ARGV 5 build key prefix, 6 n, 7.. replay verdicts, then the record's field/value pairs.
_SETTLE_DELIVERY = (
    _INTAKE_COMMON
    + """
local found = prior(6)
if found then return found end
local n = tonumber(ARGV[6])
record({unpack(ARGV, 7 + n)})
local verdict = redis.call('HGET', KEYS[1], 'verdict')
redis.call('HINCRBY', KEYS[3], verdict, 1)
return false
"""
)
# ARGV 5.. the record's field/value pairs.
_RECORD_UNVERIFIED = (
    _INTAKE_COMMON
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then record({unpack(ARGV, 5)}) end
local pairs = {unpack(ARGV, 5)}
for i = 1, #pairs, 2 do
  if pairs[i] == 'verdict' then redis.call('HINCRBY', KEYS[3], pairs[i + 1], 1) end
end
return true
"""
)
# KEYS 4 global seq, 5 repo seq, 6 dedup key, 7 builds index, 8 ticket key.
# ARGV 5 build key prefix, 6 build fields (JSON flat list), 7 ticket ttl, 8 queued reason prefix,
# 9 duplicate reason prefix, 10 n, replay verdicts, then m + m record pairs, then c + c commands
# (each: argc, argv...) that create the RQ job, run only when the build is new.
_INTAKE_BUILD = (
    _INTAKE_COMMON
    + "local function create_build(KEYS, ARGV)\n"
    + _LUA
    + """
end
local found = prior(10)
if found then return found end
local i = 11 + tonumber(ARGV[10])
local m = tonumber(ARGV[i])
local pairs = {unpack(ARGV, i + 1, i + m)}
i = i + m + 1
local r = create_build({KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[1], KEYS[8]},
                       {ARGV[5], ARGV[6], ARGV[7], ARGV[1]})
local build = r[3]
local fields = {}
for j = 1, #build, 2 do fields[build[j]] = build[j + 1] end
local verdict, status, reason
if r[1] == 1 then
  local c = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, c do
    local argc = tonumber(ARGV[i])
    redis.call(unpack(ARGV, i + 1, i + argc))
    i = i + argc + 1
  end
  verdict, status, reason = 'queued', '202', ARGV[8] .. fields['number']
elseif fields['triggered_by'] == ARGV[4] then  -- this delivery's own build (an unfinished earlier try)
  verdict, status, reason = 'queued', '202', ARGV[8] .. fields['number']
else
  verdict, status = 'duplicate', '200'
  reason = ARGV[9] .. fields['number'] .. ' (delivery ' .. (fields['triggered_by'] or '') .. ')'
end
record(pairs, {'verdict', verdict, 'status_code', status, 'reason', reason, 'build_id', r[2]})
redis.call('HINCRBY', KEYS[3], verdict, 1)
return {'build', verdict, status, reason, r[2], fields['number']}
"""
)


def _decode_delivery(h: dict[str, str]) -> Delivery:
    return Delivery(
        id=h["id"],
        event=h.get("event", ""),
        repo=h.get("repo", ""),
        verdict=h.get("verdict", ""),
        reason=h.get("reason", ""),
        build_id=int(h["build_id"]) if h.get("build_id") else None,
        status_code=int(h.get("status_code") or 0),
        received_at=float(h.get("received_at") or 0),
        duration_ms=float(h.get("duration_ms") or 0),
        action=h.get("action", ""),
        ref=h.get("ref", ""),
        sha=h.get("sha", ""),
    )
