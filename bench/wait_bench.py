"""What ``redis_wait_replicas: 1`` (WAIT 1 after each build is created) costs the webhook intake.

    .venv/bin/python bench/wait_bench.py [--n 300] [--rounds 5] [--threads 1,4]

On a ``SentinelBed`` (a primary, a replica and three sentinels on loopback, started here), the real
Flask app (test client) takes signed merged-PR deliveries, each a new build with its RQ job, through
Sentinel clients: once with ``redis_wait_replicas: 0`` (no WAIT), once with 1. The two modes take
turns, ``--rounds`` times each, in the same run; per mode the medians over rounds of deliveries/s and
of the p50 and p99 latency are printed, with the ratio WAIT 1 / no WAIT. With ``--threads T``, T
threads send at once (one app each, as gunicorn workers would be). Writes bench/results/wait.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import servicelog  # noqa: E402
from orchestrator.devstack.sentinel import SentinelBed  # noqa: E402
from tests.reliability.workload import Workload, settings  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "wait.json"
MODES = {"no WAIT": 0, "WAIT 1": 1}


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def one_round(loads: list[Workload], n: int, offset: int) -> dict[str, float]:
    """``n`` deliveries split over the workloads' threads: deliveries/s and latency quantiles (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def send(w: Workload, start: int, count: int) -> None:
        mine = []
        for i in range(start, start + count):
            t0 = time.perf_counter()
            answer = w.merged(i)
            mine.append((time.perf_counter() - t0) * 1000)
            assert answer.status == 202, answer.body
        with lock:
            latencies.extend(mine)

    per = n // len(loads)
    threads = [threading.Thread(target=send, args=(w, offset + k * per, per)) for k, w in enumerate(loads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    return {
        "per_s": len(latencies) / seconds,
        "p50_ms": quantile(latencies, 0.50),
        "p99_ms": quantile(latencies, 0.99),
    }


def bench(bed: SentinelBed, n: int, rounds: int, threads: int) -> dict[str, Any]:
    fields = bed.settings_fields()
    url = fields.pop("redis_url")
    loads = {
        mode: [Workload(settings(url, redis_wait_replicas=k, **fields)) for _ in range(threads)]
        for mode, k in MODES.items()
    }
    for ws in loads.values():  # warm up: scripts cached, connections made, RQ asked its version
        one_round(ws, 10 * threads, 10_000_000)
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    offset = 0
    for r in range(rounds):
        order = list(loads.items())
        for mode, ws in order if r % 2 == 0 else order[::-1]:  # ABBA: neither mode always goes first
            rows[mode].append(one_round(ws, n, offset))
            offset += n
    med = {
        m: {k: statistics.median(r[k] for r in rs) for k in ("per_s", "p50_ms", "p99_ms")}
        for m, rs in rows.items()
    }
    base, wait = med["no WAIT"], med["WAIT 1"]
    ratio = {k: wait[k] / base[k] for k in base}
    print(f"threads {threads}: {n} deliveries x {rounds} rounds per mode (medians over rounds)")
    for mode, m in med.items():
        print(
            f"  {mode:>8}: {m['per_s']:8.0f} deliveries/s   "
            f"p50 {m['p50_ms']:6.2f} ms   p99 {m['p99_ms']:6.2f} ms"
        )
    print(
        f"  WAIT 1 / no WAIT: throughput x{ratio['per_s']:.2f}, p50 x{ratio['p50_ms']:.2f}, "
        f"p99 x{ratio['p99_ms']:.2f}"
    )
    return {"threads": threads, "n": n, "rounds": rounds, "medians": med, "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="deliveries per round and mode")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1,4", help="comma-separated thread counts")
    args = ap.parse_args()
    servicelog.configure(stream=open(os.devnull, "w"))  # noqa: SIM115  (one line per delivery)
    with tempfile.TemporaryDirectory(prefix="mlwait-") as tmp:
        bed = SentinelBed(Path(tmp) / "bed", password="wait-bench-pass").start()
        try:
            results = [bench(bed, args.n, args.rounds, int(t)) for t in args.threads.split(",")]
        finally:
            bed.stop()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
