"""Webhook deliveries: one record per verified delivery (kept ``delivery_ttl_days``, the redelivery
window), a counter per verdict, and for rejected unsigned ones only a count and a bounded sample."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.models import Delivery
from orchestrator.store.clients import StoreBase
from orchestrator.store.scripts import lua

FINAL = ("queued", "duplicate", "ignored")  # a redelivery of these is answered from the record
BUILT = ("queued", "duplicate")  # the final verdicts that name a build
REJECTED_SAMPLE = 200  # the newest unsigned/badly signed deliveries kept (one list, not a key each)


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


def hash_of(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def record_pairs(d: Delivery) -> list[str]:
    return [x for k, v in vars(d).items() for x in (k, "" if v is None else str(v))]


def decode_delivery(h: dict[str, str]) -> Delivery:
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


class Deliveries(StoreBase):
    def get_delivery(self, delivery_id: str) -> Delivery | None:
        with self.available():
            h = self.r.hgetall(self.k.delivery(delivery_id))
        return decode_delivery(h) if h else None

    def list_deliveries(self, offset: int = 0, limit: int = 50) -> tuple[list[Delivery], int]:
        with self.available():
            ids = self.r.zrevrange(self.k.deliveries(), offset, offset + limit - 1)
            total = self.r.zcard(self.k.deliveries())
            pipe = self.r.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(self.k.delivery(i))
            return [decode_delivery(h) for h in pipe.execute() if h], int(total)

    def settle_delivery(self, d: Delivery, replay: Iterable[str] = ()) -> Replay | None:
        """Record verified delivery ``d`` as final (index it, count its verdict), in one round trip —
        unless a record of ``d.id`` already has a verdict in ``replay``: then nothing is written and
        that record (with its build, if any) is returned."""
        replay = list(replay)
        keys = [self.k.delivery(d.id), self.k.deliveries(), self.k.counter("deliveries")]
        args = [
            self.delivery_ttl,
            d.received_at,
            time.time() - self.delivery_ttl,
            d.id,
            self.k.build_prefix(),
            len(replay),
            *replay,
            *record_pairs(d),
        ]
        with self.available():
            found = self.w.eval(lua("settle_delivery"), len(keys), *keys, *args)
        if not found:
            return None
        record, build = hash_of(found[0]), hash_of(found[1])
        ref = BuildRef(int(build["id"]), int(build.get("number") or 0)) if build else None
        return Replay(decode_delivery(record), ref)

    def reject_unverified(self, d: Delivery) -> None:
        """Count a delivery rejected before its signature was verified and keep it in the bounded
        sample (the newest ``REJECTED_SAMPLE``): an unauthenticated sender creates no key of its own
        and cannot touch a genuine delivery's record. One round trip."""
        entry = json.dumps(d.to_dict())
        with self.available():
            pipe = self.w.pipeline(transaction=True)
            pipe.hincrby(self.k.counter("deliveries"), d.verdict, 1)
            pipe.lpush(self.k.rejected_sample(), entry)
            pipe.ltrim(self.k.rejected_sample(), 0, REJECTED_SAMPLE - 1)
            pipe.execute()

    def rejected_sample(self, limit: int = REJECTED_SAMPLE) -> list[Delivery]:
        """The newest rejected unsigned deliveries, newest first."""
        with self.available():
            raws = self.r.lrange(self.k.rejected_sample(), 0, limit - 1)
        return [Delivery(**json.loads(r)) for r in raws]
