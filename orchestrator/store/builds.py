"""Builds: created atomically with their RQ job (and, for a webhook, the delivery's verdict), read,
updated, listed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

import redis

from orchestrator import defaults
from orchestrator.errors import NotFound
from orchestrator.models import Build, BuildStatus, Delivery, StepRecord, Trigger
from orchestrator.store.clients import StoreBase
from orchestrator.store.deliveries import BUILT, decode_delivery, hash_of, record_pairs
from orchestrator.store.leases import lease_ttl_ms
from orchestrator.store.retention import Tombstone
from orchestrator.store.scripts import lua

_JSON_FIELDS = {"steps", "deploys", "gate", "model"}
_INT_FIELDS = {"id", "number", "rerun_of"}
_FLOAT_FIELDS = {"created_at", "started_at", "finished_at"}
BUILD_FIELDS = {f.name for f in fields(Build)}
TICKET_TTL = defaults.TICKET_TTL
REASONS = ("queued as build #", "commit already built as build #")  # (queued, duplicate) prefixes


def encode_build_fields(values: dict[str, Any]) -> dict[str, str]:
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


def decode_build(h: dict[str, str]) -> Build:
    kw: dict[str, Any] = {}
    for k, v in h.items():
        if k not in BUILD_FIELDS:
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


def _initial(trigger: Trigger, triggered_by: str, rerun_of: int | None, extra: dict[str, Any]) -> list[str]:
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
        "triggered_by": triggered_by,
        "rerun_of": rerun_of,
        "steps": [],
        **extra,
    }
    return [x for kv in encode_build_fields(values).items() for x in kv]


class Builds(StoreBase):
    def create_build(
        self,
        trigger: Trigger,
        *,
        pipeline: str,
        triggered_by: str,
        enqueue: Callable[[Any, str], Any],
        rerun_of: int | None = None,
        delivery: Delivery | None = None,
        dedup: bool = True,
        extra: dict[str, Any] | None = None,
        reasons: tuple[str, str] = REASONS,
    ) -> tuple[Build, bool]:
        """Create build #N and its queue job atomically; return (build, created).

        One MULTI/EXEC: the create_build script (gap-free numbers; refuses duplicates of the same repo,
        sha, pipeline and branch; with ``delivery``, its verdict) and then ``enqueue(pipe, ticket)``,
        RQ's public ``enqueue_call(..., pipeline=pipe)``. No crash can leave a build without a job or
        a queued verdict without a build. A duplicate's job is deleted right after (RQ's
        ``Job.delete``, one more round trip only then); should this process die in between, its
        ticket resolves to nothing and the worker drops it.

        With ``delivery`` (a webhook), the delivery is recorded in the same script with verdict queued
        or duplicate (reason: ``reasons`` + the build's number) and, on return, holds its record. If
        its id already has a verdict that names a build (``BUILT``), nothing is written and
        ``delivery`` becomes that earlier record (a redelivery: its ``received_at`` is the first
        one's); the build is the one it names. ``extra`` sets further initial fields (pipeline_yaml,
        image, deploys...).
        """
        unknown = set(extra or {}) - BUILD_FIELDS
        if unknown:
            raise ValueError(f"unknown build fields {sorted(unknown)}")
        ticket = uuid.uuid4().hex
        keys = [
            self.k.build_seq(),
            self.k.repo_seq(trigger.repo),
            self.k.dedup(trigger.repo, trigger.sha, pipeline, trigger.branch) if dedup else "",
            self.k.builds(),
            self.k.ticket(ticket),
            *self._delivery_keys(delivery),
        ]
        flat = _initial(trigger, triggered_by, rerun_of, extra or {})
        args: list[Any] = [self.k.build_prefix(), json.dumps(flat), TICKET_TTL, self.delivery_ttl]
        if delivery is not None:
            args += [json.dumps(record_pairs(delivery)), *self._delivery_args(delivery)[1:], *reasons, *BUILT]
        with self.available():
            pipe = self.w.pipeline(transaction=True)
            pipe.multi()
            # EVAL, not the registered script: in a pipeline that would cost a SCRIPT EXISTS round trip
            # first; EVAL of a cached script is cheap and can never fail with NOSCRIPT inside MULTI.
            pipe.eval(lua("create_build"), len(keys), *keys, *args)
            job = enqueue(pipe, ticket)
            kind, build_id, raw, record = pipe.execute()[0]
            if kind != 1 and job is not None:
                job.delete()  # a duplicate's job (its ticket resolves to nothing): RQ's public API
        # Acknowledged (the webhook's 2xx) only once replicas hold it too: also a duplicate's or a replayed
        # verdict, whose record may have been written before a failover the replica did not see.
        self.require_replicas(f"build {build_id}" if kind == 1 else f"the verdict naming build {build_id}")
        if delivery is not None:
            delivery.__dict__.update(decode_delivery(hash_of(record)).__dict__)
        if not raw:  # a replayed record whose build is gone: NotFound
            return self.get_build(int(build_id)), False
        return decode_build(hash_of(raw)), kind == 1

    def _delivery_keys(self, d: Delivery | None) -> list[str]:
        if d is None:
            return ["", "", ""]
        return [self.k.delivery(d.id), self.k.deliveries(), self.k.counter("deliveries")]

    def _delivery_args(self, d: Delivery) -> list[Any]:
        """record ttl, id, score, trim-below score (the layout both delivery scripts share)."""
        return [self.delivery_ttl, d.id, d.received_at, time.time() - self.delivery_ttl]

    def resolve_ticket(self, ticket: str) -> int | None:
        with self.available():
            v = self.r.get(self.k.ticket(ticket))
        return int(v) if v else None

    def get_build(self, build_id: int) -> Build:
        """The build; NotFound says whether retention pruned it (and why) or it never existed."""
        with self.available():
            h = self.r.hgetall(self.k.build(build_id))
        if not h:
            raise NotFound(self.missing_build_message(build_id), build=build_id)
        return decode_build(h)

    def tombstone(self, build_id: int) -> Tombstone | None:
        """Why build ``build_id`` was pruned, while its tombstone lasts."""
        with self.available():
            raw = self.r.get(self.k.build_pruned(build_id))
        return Tombstone(**json.loads(raw)) if raw else None

    def missing_build_message(self, build_id: int) -> str:
        """What to say about a build id without a record: pruned (with the rule, while its tombstone
        lasts; builds are numbered without gaps and only retention deletes one) or never created."""
        stone = self.tombstone(build_id)
        if stone is not None:
            return f"build {build_id} ({stone.repo} #{stone.number}) was pruned by retention: {stone.reason}"
        with self.available():
            seq = self.r.get(self.k.build_seq())
        if 0 < build_id <= int(seq or 0):
            return f"build {build_id} was pruned by retention (its record and log are gone)"
        return f"build {build_id} does not exist"

    def update_build(self, build_id: int, **values: Any) -> None:
        unknown = set(values) - BUILD_FIELDS
        if unknown:
            raise ValueError(f"unknown build fields {sorted(unknown)}")
        with self.available():
            self.r.hset(self.k.build(build_id), mapping=encode_build_fields(values))

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
                    pipe.hset(key, mapping=encode_build_fields(values))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def claim_build(self, build_id: int, token: str, lease_seconds: float, **values: Any) -> bool:
        """queued → running (with ``values``) and the lease held by ``token``, in one transaction: a
        claim is never recorded without its lease (the janitor could not reap it). False if not queued."""
        key = self.k.build(build_id)
        with self.available(), self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "status") != str(BuildStatus.QUEUED):
                        pipe.unwatch()
                        return False
                    seconds, micros = pipe.time()  # lease deadlines are on Redis's clock (store/leases.py)
                    now = float(seconds) + micros / 1e6
                    pipe.multi()
                    pipe.hset(
                        key, mapping=encode_build_fields({"status": str(BuildStatus.RUNNING), **values})
                    )
                    pipe.set(self.k.lease(build_id), token, px=lease_ttl_ms(lease_seconds))
                    pipe.zadd(self.k.running(), {str(build_id): now + lease_seconds})
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
                return self._get_many(ids[offset : offset + limit]), len(ids)
            matched = self._matching(ids, (status, branch, repo))
            return self._get_many(matched[offset : offset + limit]), len(matched)

    def _matching(self, ids: list[str], want: tuple[str | None, ...]) -> list[str]:
        # Match on the three filter fields alone (not whole builds with their steps), then load
        # only the page: a filter over thousands of builds costs milliseconds, not a second.
        matched: list[str] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            pipe = self.r.pipeline(transaction=False)
            for i in chunk:
                pipe.hmget(self.k.build(int(i)), "status", "branch", "repo")
            for i, got in zip(chunk, pipe.execute(), strict=True):
                if got[0] is not None and all(w is None or w == f for w, f in zip(want, got, strict=True)):
                    matched.append(i)
        return matched

    def _get_many(self, ids: list[str]) -> list[Build]:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.k.build(int(i)))
        return [decode_build(h) for h in pipe.execute() if h]

    def latest_build_id(self) -> int:
        with self.available():
            v = self.r.get(self.k.build_seq())
        return int(v) if v else 0
