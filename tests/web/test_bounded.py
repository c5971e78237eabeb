"""Bounded responses and Redis sizing: the full log is streamed in chunks, /healthz and /metrics
report Redis memory against its maxmemory (the test bed's Redis runs with 512mb, noeviction)."""

from __future__ import annotations

from typing import Any

from orchestrator import Runtime

from .conftest import Seed


def test_the_full_log_is_streamed_in_chunks(rt: Runtime, seed: Seed, client: Any) -> None:
    b = seed.build("success")
    lines = [("test", "stdout", f"{i:06d} " + "z" * 200) for i in range(15_000)]  # ~3 MB
    for start in range(0, len(lines), 2000):
        rt.store.append_log(b.id, lines[start : start + 2000])
    resp = client.get(f"/api/v1/builds/{b.id}/log", buffered=False)
    assert resp.status_code == 200 and resp.is_streamed
    chunks = list(resp.response)
    assert len(chunks) == 8  # 2,000 entries a round trip
    body = b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks).decode()
    assert body == "".join(f"[test] {t}\n" for _, _, t in lines)
    resp.close()


def test_healthz_and_metrics_report_redis_memory(client: Any) -> None:
    health = client.get("/healthz").get_json()
    assert health["redis_memory"]["maxmemory"] == 512 * 1024 * 1024
    assert 0 < health["redis_memory"]["used_memory"] < 512 * 1024 * 1024
    text = client.get("/metrics").get_data(as_text=True)
    assert "mlship_redis_maxmemory_bytes 5.36870912e+08" in text
    used = [ln for ln in text.splitlines() if ln.startswith("mlship_redis_used_memory_bytes ")]
    assert len(used) == 1 and float(used[0].split()[1]) > 0
