"""Masking (pure) and the batched log writer against a real Redis: megabytes in, every line out."""

from __future__ import annotations

import base64
import time

import pytest

from orchestrator.build.log import LogWriter, Masker
from orchestrator.store import Store


@pytest.mark.parametrize(
    ("secrets", "text", "expected"),
    [
        (["hunter22"], "password=hunter22!", "password=***!"),
        (["hunter22"], "no secret here", "no secret here"),
        (["a", ""], "a banana", "a banana"),  # too short to be a secret: masking it would hide nothing
        (["line-one\nline-two"], "got line-two and line-one", "got *** and ***"),
        (["hunter22"], "auth " + base64.b64encode(b"hunter22").decode(), "auth ***"),
        (
            ["hunter22"],
            "urlsafe " + base64.urlsafe_b64encode(b"hunter22").decode().rstrip("="),
            "urlsafe ***",
        ),
        (["abc", "abcdef"], "abcdef abc", "*** ***"),  # longest first: no half-masked leftovers
        (["p.s*[x]"], "regex p.s*[x] chars", "regex *** chars"),
    ],
)
def test_masker(secrets: list[str], text: str, expected: str) -> None:
    assert Masker(secrets)(text) == expected


@pytest.mark.parametrize("prefix", [b"", b"u", b"us", b"user:"])
def test_masker_finds_base64_inside_a_longer_blob(prefix: bytes) -> None:
    blob = base64.b64encode(prefix + b"s3cr3t-value" + b"tail").decode()
    masked = Masker(["s3cr3t-value"])(blob)
    assert "***" in masked
    assert "czNjcjN0LXZhbHVl" not in masked


@pytest.fixture
def store(redis_url: str) -> Store:
    return Store.from_url(redis_url)


def test_megabytes_of_output_arrive_complete_and_in_order(store: Store) -> None:
    w = LogWriter(store, 1, Masker(["topsecret"]))
    w.step = "test"
    lines = [f"line {i} " + "x" * 100 + (" topsecret" if i % 1000 == 0 else "") for i in range(50_000)]
    blob = "\n".join(lines) + "\n"
    t0 = time.monotonic()
    for i in range(0, len(blob), 4093):  # chunks that cut lines anywhere, as docker does
        w.write(blob[i : i + 4093])
    w.close()
    assert time.monotonic() - t0 < 20
    got = [f["text"] for _, f in store.read_log(1, count=100_000)]
    assert len(got) == 50_000
    assert got[1] == lines[1]
    assert got[0].endswith(" ***") and got[49_000].endswith(" ***")
    assert "topsecret" not in store.log_text(1)


def test_a_quiet_line_shows_without_more_output_and_partial_lines_wait(store: Store) -> None:
    w = LogWriter(store, 2, flush_interval=0.1)
    w.step = "s"
    w.write("first\nsecond without newline")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not store.read_log(2):
        time.sleep(0.05)
    assert [f["text"] for _, f in store.read_log(2)] == ["first"]  # flushed by time, not by more output
    w.write(" ends here\n", stream="stdout")
    w.close()
    assert [(f["step"], f["text"]) for _, f in store.read_log(2)] == [
        ("s", "first"),
        ("s", "second without newline ends here"),
    ]


def test_lines_are_kept_while_redis_is_away(own_redis) -> None:
    store = Store.from_url(own_redis.url)
    w = LogWriter(store, 3, flush_interval=0.05)
    own_redis.stop()
    w.write("during the outage\n")
    time.sleep(0.3)
    own_redis.start()
    w.close()
    assert [f["text"] for _, f in store.read_log(3)] == ["during the outage"]


def _texts(store: Store, build_id: int) -> list[str]:
    return [f["text"] for _, f in store.read_log(build_id, count=100_000)]


def test_the_cap_keeps_a_prefix_and_writes_one_marker_with_the_final_count(store: Store) -> None:
    w = LogWriter(store, 7, max_bytes=10_000, flush_bytes=2_000)
    w.step = "test"
    lines = [f"{i:04d} " + "y" * 95 for i in range(1000)]  # 100 bytes each: 100 fit
    for line in lines:
        w.write(line + "\n")
    w.close()
    got = _texts(store, 7)
    assert got[:-1] == lines[:100]
    assert got[-1] == ("log cap reached (max_log_bytes=10000): 900 more lines (90000 bytes) were dropped")
    assert store.log_cap(7).dropped_lines == 900
    store.close_log(7, 10_000)  # a second close (the janitor, say) writes no second marker
    assert len(_texts(store, 7)) == 101


def test_two_writers_of_one_build_share_its_cap(store: Store) -> None:
    writers = [LogWriter(store, 8, max_bytes=50_000, flush_bytes=1_000) for _ in range(2)]
    for i in range(2000):
        writers[i % 2].write(f"w{i % 2} line {i:05d}".ljust(50, ".") + "\n")
    for w in writers:
        w.close()
    got = _texts(store, 8)
    markers = [t for t in got if t.startswith("log cap reached")]
    assert len(markers) == 1
    kept = [t for t in got if not t.startswith("log cap reached")]
    assert sum(len(t) for t in kept) <= 50_000 and len(kept) == 1000
    assert markers[0].endswith(": 1000 more lines (50000 bytes) were dropped")


def test_no_cap_keeps_everything(store: Store) -> None:
    w = LogWriter(store, 9, max_bytes=0)
    for i in range(500):
        w.write(f"line {i}\n")
    w.close()
    assert len(_texts(store, 9)) == 500 and store.log_cap(9).dropped_lines == 0
