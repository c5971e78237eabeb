"""Redis memory per build and per delivery, measured on a real redis-server this script starts.

    .venv/bin/python bench/memory_bench.py [--n 1000] [--log-kb 10]

Each phase sends its deliveries through the real Flask app (test client) or finishes builds with the
real LogWriter, and reports the growth of Redis's ``used_memory`` (INFO memory) divided by the count:

- rejected: unsigned or badly signed deliveries with fresh ids (only a counter and a bounded sample),
  twice: while the sample fills, and once it holds its 200;
- ignored: signed deliveries with an ignored verdict (one record each, kept delivery_ttl_days);
- queued: signed merged pull requests (record + build + RQ job + ticket + dedup key);
- finished: those builds as a worker leaves them (steps, pipeline, a ``--log-kb`` log);
- pruned: the same builds pruned by retention (what stays: a tombstone, the delivery record, the job).

Writes bench/results/memory.json; Redis is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import servicelog  # noqa: E402
from orchestrator.devstack.services import RedisServer  # noqa: E402
from tests.reliability.workload import Workload, settings, used_memory  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "memory.json"


def phase(w: Workload, name: str, n: int, work: Callable[[int], object]) -> dict[str, float]:
    before = used_memory(w.rt)
    t0 = time.monotonic()
    for i in range(n):
        work(i)
    after = used_memory(w.rt)
    row = {
        "n": n,
        "bytes": after - before,
        "per_item": (after - before) / n,
        "seconds": time.monotonic() - t0,
    }
    print(f"{name:>9}: {n:6d} x -> {after - before:>12,d} B   {row['per_item']:>10,.0f} B each")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--log-kb", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlmem-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            w = Workload(settings(redis.url, retention_days=0, retention_builds=0))
            servicelog.configure(stream=open(os.devnull, "w"))  # noqa: SIM115  (one line per delivery)
            for i in range(20):  # warm up: scripts cached, the first keys of each kind created
                w.junk(i), w.ignored(i), w.merged(i)
            results = run(w, args.n, args.log_kb * 1024)
            mem = w.rt.store.memory()
        finally:
            redis.stop()
    out = {"n": args.n, "log_bytes": args.log_kb * 1024, "maxmemory": mem["maxmemory"], **results}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def run(w: Workload, n: int, log_bytes: int) -> dict[str, dict[str, float]]:
    results = {
        "rejected": phase(w, "rejected", n, w.junk),
        "rejected_sample_full": phase(w, "rejected", n, w.junk),  # the sample holds its 200 already
        "ignored": phase(w, "ignored", n, w.ignored),
    }
    ids: list[int] = []
    results["queued"] = phase(w, "queued", n, lambda i: ids.append(w.merged(i).body["build"]))
    results["finished"] = phase(w, "finished", n, lambda i: w.finish(ids[i], log_bytes))
    before = used_memory(w.rt)
    pruned = w.rt.store.prune_builds([(i, "memory bench") for i in ids], time.time())
    assert len(pruned) == n, "every finished build was pruned"
    time.sleep(1.0)  # UNLINK frees in the background
    after = used_memory(w.rt)
    results["pruned"] = {"n": n, "bytes": after - before, "per_item": (after - before) / n, "seconds": 0.0}
    print(f"{'pruned':>9}: {n:6d} x -> {after - before:>12,d} B   {(after - before) / n:>10,.0f} B each")
    return results


if __name__ == "__main__":
    main()
