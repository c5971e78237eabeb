"""A canary 5% → 25% → 100% under constant load, for a good and a bad version (10% of its answers 5xx).

    .venv/bin/python bench/canary_bench.py [--rate 200] [--interval 5]

Starts the real test bed (dockerd if none runs, registry, redis, one sshd host), builds the test service
of tests/deploy/canary_app.py as builds 1 and 2, and for each version: deploys build 1, then build 2
with ``strategy: {canary: {steps: [5, 25, 100], interval: <interval>, analysis: {max_error_rate: 0.02}}}``
while ``--rate`` GET /work per second (a new connection each) run. Prints, against the goals of the
issue "Progressive delivery":

- failed requests (goal: 0 for the good version; for the bad one ≤ the canary share x the requests of
  the first interval);
- from the regression (the candidate's first traffic) to the full rollback (every edge sends it
  nothing), in intervals (goal ≤ 2).

Every daemon it starts is stopped at the end; results also go to bench/results/canary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.devstack.services import (
    DockerDaemon,
    RedisServer,
    Registry,
    SshdHost,
    ensure_base_image,
    keygen,
)
from orchestrator.errors import DeployError
from orchestrator.store import Store
from tests.deploy.canary_app import build_canary_images
from tests.deploy.helpers import DeployEnv, Load, cleanup, test_settings

STEPS = [5, 25, 100]


class _Hosts:
    def __init__(self, host: SshdHost, key: Path, known: Path) -> None:
        self.hosts = {"qa": host, "prod": host}
        self.client_key = key
        self.known_hosts = known

    def __getitem__(self, name: str) -> SshdHost:
        return self.hosts[name]


def one(env: DeployEnv, rate: float, interval: float, fault: dict[str, str]) -> dict[str, Any]:
    """Build 1, then a canary of build 2 with ``fault`` under load; what the clients and the deploy saw."""
    env.env, env.strategy = {}, None
    env.deploy(env.new_build(1))
    env.env = dict(fault)
    env.strategy = {
        "canary": {
            "steps": STEPS,
            "interval": f"{interval}s",
            "analysis": {"max_error_rate": 0.02, "min_requests": 20},
        }
    }
    b2 = env.new_build(2)
    load = Load(env.url, rate=rate, path="/work")
    load.start()
    time.sleep(1.0)
    error = ""
    t0 = time.monotonic()
    with env.context(b2) as ctx:
        from orchestrator.steps.deploy import deploy

        try:
            deploy(ctx)
        except DeployError as exc:
            error = str(exc)
    took = time.monotonic() - t0
    log_file = Path(tempfile.gettempdir()) / f"canary-bench-{env.name}.log"
    log_file.write_text(env.log(b2))
    time.sleep(1.0)
    result = load.stop()
    st = ctx.record.details.get("strategy") or {}
    rows = st.get("intervals") or []
    first = rows[0] if rows else {"stable": {"requests": 0}, "candidate": {"requests": 0}}
    first_requests = first["stable"]["requests"] + first["candidate"]["requests"]
    out: dict[str, Any] = {
        "requests": result["requests"],
        "failed": result["failed"],
        "outcome": st.get("state", ""),
        "deploy_s": round(took, 1),
        "intervals": [
            {
                "phase": r["phase"],
                "verdict": r["verdict"],
                "stable": r["stable"]["requests"],
                "candidate": r["candidate"]["requests"],
                "candidate_5xx": r["candidate"]["errors"],
            }
            for r in rows
        ],
        "first_interval_requests": first_requests,
        "failures": sorted(set(result["failures"])),
        "p99_ms": result["p99_ms"],
        "error": error[:200],
        "log": str(log_file),
    }
    if "returned_at" in st and "started_at" in st:
        out["regression_to_rollback_intervals"] = round((st["returned_at"] - st["started_at"]) / interval, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "canary.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlc-", dir="/tmp"))
    daemon = DockerDaemon().ensure(work=Path("/run/mlship-test"))
    client = daemon.client()
    redis = RedisServer(work / "redis").start()
    registry = Registry(work / "registry").start()
    key = keygen(work / "ssh" / "client_key", "bench")
    host = SshdHost(
        "qa", work / "ssh" / "qa", daemon.host, (key.parent / "client_key.pub").read_text()
    ).start()
    known = work / "ssh" / "known_hosts"
    known.write_text(host.known_hosts_line())
    results: dict[str, dict[str, Any]] = {}
    try:
        print("building the test service (builds 1 and 2)...", flush=True)
        base = ensure_base_image(daemon.host)
        images = build_canary_images(client, base, registry.addr)
        hosts = _Hosts(host, key, known)
        for name, fault in (("good", {}), ("bad (10% 5xx)", {"ERROR_EVERY": "10"})):
            store = Store.from_url(redis.url)
            store.r.flushall()
            env = DeployEnv(
                store=store,
                settings=test_settings(redis.url, hosts, work / "ws"),
                hosts=hosts,
                images=images,
                volume="",
                edge_base_image=base,
                port=5000,
                volume_spec=[],
            )
            try:
                results[name] = one(env, args.rate, args.interval, fault)
            finally:
                cleanup(client, env.name)
    finally:
        host.stop()
        registry.stop()
        redis.stop()
        client.close()
        daemon.stop()
    share = STEPS[0] / 100
    good, bad = results["good"], results["bad (10% 5xx)"]
    bad_limit = share * bad["first_interval_requests"]
    print(
        f"\ncanary {' -> '.join(map(str, STEPS))}%, interval {args.interval:g}s, "
        f"{args.rate:g} GET /work per second\n"
    )
    print(
        f"{'version':<15} {'requests':>9} {'failed':>7} {'outcome':>12} {'deploy s':>9} {'to rollback':>12}"
    )
    for name, r in results.items():
        back = r.get("regression_to_rollback_intervals")
        print(
            f"{name:<15} {r['requests']:>9} {r['failed']:>7} {r['outcome']:>12} {r['deploy_s']:>9} "
            f"{(f'{back} int.' if back is not None else '-'):>12}"
        )
        if r["failures"]:
            print(f"    client failures, e.g.: {r['failures'][:3]}")
        for i in r["intervals"]:
            print(
                f"    {i['phase']:<12} {i['verdict']:<6} stable {i['stable']:>5}  "
                f"candidate {i['candidate']:>5} ({i['candidate_5xx']} 5xx)"
            )
    goals = {
        "good: 0 failed": good["failed"] == 0 and good["outcome"] == "done",
        f"bad: failed {bad['failed']} <= {share:g} x {bad['first_interval_requests']} = {bad_limit:g}": bad[
            "failed"
        ]
        <= bad_limit,
        f"bad: regression to rollback {bad.get('regression_to_rollback_intervals')} <= 2 intervals": (
            bad.get("regression_to_rollback_intervals") or 99
        )
        <= 2,
    }
    print()
    for goal, ok in goals.items():
        print(f"{'met' if ok else 'MISSED':>6}  {goal}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"rate": args.rate, "interval": args.interval, "results": results, "goals": goals}, indent=2
        )
    )
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
