"""Hostile input at the webhook: generated requests (hypothesis) never get a server error and junk
never enqueues anything.

Four families, ``MLSHIP_FUZZ_EXAMPLES`` in all (CI default 10,000) through Flask's test client against
the real session Redis, plus a smaller run against a real ``orchestrator web`` (gunicorn):
random headers and bodies; valid signatures over junk JSON; valid signatures over near-valid
payloads whose required fields have the wrong type; and valid payloads in other encodings and sizes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from orchestrator import create_app
from orchestrator.intake.github import sign
from orchestrator.store import Store
from tests.webhooks.helpers import REPO, SECRET, merged_pr
from tests.webhooks.helpers import settings as webhook_settings

TOTAL = int(os.environ.get("MLSHIP_FUZZ_EXAMPLES", "10000"))
SHARE = {"random": 0.3, "junk_json": 0.25, "near_valid": 0.3, "encodings": 0.15}
STATS: dict[str, Counter[int]] = {}


def examples(family: str) -> int:
    return max(50, int(TOTAL * SHARE[family]))


def fuzz(family: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=examples(family), deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )


@pytest.fixture(scope="module")
def hook(redis_server: Any) -> Any:
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    app = create_app(webhook_settings(redis_server.url, push=("main", "release/*")))
    return app.test_client(), Store.from_url(redis_server.url)


def _queue_len(store: Store) -> int:
    return int(store.r.llen("rq:queue:builds"))


def post(hook: Any, family: str, body: bytes, headers: dict[str, str]) -> int:
    client, _ = hook
    resp = client.post("/webhooks/github", data=body, headers=headers)
    STATS.setdefault(family, Counter())[resp.status_code] += 1
    assert resp.status_code < 500, (resp.status_code, resp.data[:300], headers)
    if resp.status_code >= 400:
        doc = json.loads(resp.data)  # errors are JSON too
        assert doc["verdict"] == "rejected"
    return resp.status_code


def signed(body: bytes, event: str, delivery: str, **extra: str) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(SECRET.encode(), body),
        **extra,
    }


def nothing_enqueued(hook: Any) -> Callable[[], None]:
    _, store = hook
    before = (store.latest_build_id(), _queue_len(store))
    return lambda: _assert_same(before, (store.latest_build_id(), _queue_len(store)))


def _assert_same(before: tuple[int, int], after: tuple[int, int]) -> None:
    assert before == after, f"junk created a build or a job: (builds, jobs) {before} → {after}"


# -- strategies -----------------------------------------------------------------------------------

header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
delivery_ids = st.one_of(st.uuids().map(str), header_text)
events = st.sampled_from(["pull_request", "push", "ping", "issues", "", "PUSH", "pull_request\x00"])
events = events | header_text
content_types = (
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/x-www-form-urlencoded",
            "text/plain",
            "",
            "application/json; charset=utf-16",
            "multipart/form-data; boundary=x",
        ]
    )
    | header_text
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
KEYS = ["action", "pull_request", "repository", "ref", "after", "deleted", "head_commit", "number", "zen"]
junk_objects = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), json_values, max_size=8)

# Required fields of a merged PR and the wrong-typed values put in their place.
REQUIRED = [
    ("action",),
    ("pull_request",),
    ("pull_request", "merged"),
    ("pull_request", "base"),
    ("pull_request", "base", "ref"),
    ("pull_request", "merge_commit_sha"),
    ("repository",),
    ("repository", "full_name"),
]
wrong_values = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.text(max_size=60).filter(lambda s: s not in ("closed", "main", REPO)),
    st.just("0" * 39),
    st.just("G" * 40),
    st.just("--upload-pack=touch /tmp/pwned"),
)


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        doc = doc[k]
    doc[path[-1]] = value


# -- the families -----------------------------------------------------------------------------------


@given(
    body=st.binary(max_size=2048),
    delivery=delivery_ids,
    event=events,
    ctype=content_types,
    sig=st.one_of(st.none(), header_text, st.just("sha256=" + "0" * 64)),
    extra=st.dictionaries(
        st.sampled_from(
            ["X-Hub-Signature", "Content-Encoding", "Transfer-Encoding", "X-GitHub-Hook-ID", "User-Agent"]
        ),
        header_text,
        max_size=3,
    ),
)
@fuzz("random")
def test_random_requests(
    hook: Any, body: bytes, delivery: str, event: str, ctype: str, sig: str | None, extra: dict[str, str]
) -> None:
    check = nothing_enqueued(hook)
    headers = {"X-GitHub-Delivery": delivery, "X-GitHub-Event": event, "Content-Type": ctype, **extra}
    if sig is not None:
        headers["X-Hub-Signature-256"] = sig
    headers = {k: v for k, v in headers.items() if "\n" not in v and "\r" not in v}
    post(hook, "random", body, headers)
    check()


@given(
    doc=st.one_of(json_values, junk_objects),
    event=st.sampled_from(["pull_request", "push", "ping"]),
    delivery=st.uuids().map(lambda u: f"junk-{u}"),
)
@fuzz("junk_json")
def test_valid_signature_over_junk_json(hook: Any, doc: Any, event: str, delivery: str) -> None:
    check = nothing_enqueued(hook)
    body = json.dumps(doc).encode()
    post(hook, "junk_json", body, signed(body, event, delivery))
    check()


@given(
    path=st.sampled_from(REQUIRED),
    value=wrong_values,
    delivery=st.uuids().map(lambda u: f"near-{u}"),
    sha=st.binary(min_size=20, max_size=20).map(bytes.hex),
)
@fuzz("near_valid")
def test_valid_signature_over_near_valid_payloads(
    hook: Any, path: tuple[str, ...], value: Any, delivery: str, sha: str
) -> None:
    assume(not (path[-1] == "merged" and value is True))  # the one right value among the wrong ones
    check = nothing_enqueued(hook)
    doc = merged_pr(sha)
    _set(doc, path, value)
    body = json.dumps(doc).encode()
    status = post(hook, "near_valid", body, signed(body, "pull_request", delivery))
    assert status != 202
    check()


@given(
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-32", "utf-8-sig", "latin-1"]),
    pad=st.integers(0, 70_000),
    ascii_only=st.booleans(),
    delivery=st.uuids().map(lambda u: f"enc-{u}"),
    sha=st.binary(min_size=20, max_size=20).map(bytes.hex),
)
@fuzz("encodings")
def test_encodings_and_sizes(
    hook: Any, encoding: str, pad: int, ascii_only: bool, delivery: str, sha: str
) -> None:
    """A real merge in another encoding (JSON's own: UTF-8/16/32, with or without BOM) or with a big
    title: one build within the size limit (64 KiB here), 413 and nothing over it."""
    _, store = hook
    doc = merged_pr(sha)
    doc["pull_request"]["title"] = ("x" if ascii_only or encoding == "latin-1" else "é€😀") * (pad // 4)
    body = json.dumps(doc, ensure_ascii=ascii_only).encode(encoding)
    before = store.latest_build_id()
    status = post(hook, "encodings", body, signed(body, "pull_request", delivery))
    if len(body) > 64 * 1024:
        assert status == 413
        assert store.latest_build_id() == before
    else:  # hypothesis repeats values: a repeated sha is a duplicate, a repeated id is replayed
        assert status in (200, 202), status
        assert store.latest_build_id() - before == 1 or store.latest_build_id() == before


FAMILIES: dict[str, Callable[[Any], None]] = {
    "random": test_random_requests,
    "junk_json": test_valid_signature_over_junk_json,
    "near_valid": test_valid_signature_over_near_valid_payloads,
    "encodings": test_encodings_and_sizes,
}


def test_zz_fuzz_counts(hook: Any) -> None:
    """Every family sent (about) its share of the examples, and the server counted what it answered.

    Runs after the families above and reads what they sent; run on its own (or if one of them did
    not run), it runs the missing families itself first, so it always checks something."""
    for family, run in FAMILIES.items():
        if family not in STATS:
            run(hook)
    _, store = hook
    total = sum(sum(c.values()) for c in STATS.values())
    print("\nFUZZ", {k: dict(sorted(v.items())) for k, v in STATS.items()}, "total", total)
    for family in FAMILIES:
        assert sum(STATS[family].values()) >= examples(family) * 0.95, family
        assert all(status < 500 for status in STATS[family]), family
    assert total >= min(TOTAL, 10_000) * 0.95
    # The server counted a verdict for every answer that had a usable delivery id: never more
    # counted than sent (a counter bumped twice for one request would show here).
    assert 0 < sum(store.counters("deliveries").values()) <= total


def test_fuzz_against_gunicorn(tmp_path: Path, redis_url: str) -> None:
    """A smaller run of junk over real HTTP: every answer is a 4xx (or 200 ignored), nothing queued."""
    import requests

    from tests.webhooks.test_gunicorn import start_web, stop_web

    web = start_web(tmp_path, redis_url)
    store = Store.from_url(redis_url)
    seen: Counter[int] = Counter()
    try:
        session = requests.Session()

        @given(
            doc=st.one_of(json_values, junk_objects),
            raw=st.binary(max_size=512),
            use_raw=st.booleans(),
            sign_it=st.booleans(),
            event=events,
            delivery=delivery_ids,
        )
        @settings(
            max_examples=int(os.environ.get("MLSHIP_FUZZ_HTTP_EXAMPLES", "400")),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(doc: Any, raw: bytes, use_raw: bool, sign_it: bool, event: str, delivery: str) -> None:
            body = raw if use_raw else json.dumps(doc).encode()
            h = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "Content-Type": "application/json"}
            if sign_it:
                h["X-Hub-Signature-256"] = sign(SECRET.encode(), body)
            h = {k: v for k, v in h.items() if v.isprintable() and v == v.strip()}
            r = session.post(web.url + "/webhooks/github", data=body, headers=h, timeout=10)
            seen[r.status_code] += 1
            assert r.status_code < 500, (r.status_code, r.text[:300])

        run()
    finally:
        stop_web(web)
    print("\nFUZZ-HTTP", dict(sorted(seen.items())))
    assert store.latest_build_id() == 0 and store.r.llen("rq:queue:builds") == 0
