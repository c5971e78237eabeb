"""Pipeline engine overhead, measured against real services started here.

    .venv/bin/python bench/pipeline_bench.py [--builds 50] [--pairs 3]

1. Pickup latency: an idle ``orchestrator worker`` process; builds are created exactly as the webhook
   creates them (``Store.create_build`` with the RQ job, one Redis transaction), one at a time; the
   time from the build's ``created_at`` (the delivery accepted) to its first step's ``started_at``
   (checkout done, pipeline loaded and validated) — p50/p99 over N builds. Goal p50 <= 100 ms, p99 <= 500 ms.
2. Full run overhead: the project's real build + test-in-image + push (root Dockerfile, pytest inside,
   push to a local registry) through the worker, versus a bare shell script doing the same git checkout
   and the same ``docker build`` / ``docker run`` / ``docker push`` commands; interleaved pairs with
   alternating order, same machine, same daemon, same warm layer cache. Goal <= 1.10x.

Writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.build.queue import build_queue, enqueuer  # noqa: E402
from orchestrator.config import Settings  # noqa: E402
from orchestrator.devstack.services import DockerDaemon, GitOrigin, RedisServer, Registry, ensure_base_image  # noqa: E402
from orchestrator.models import Build, Trigger  # noqa: E402
from orchestrator.store import Store  # noqa: E402

REPO = "acme/house-price"

QUICK = """\
version: 1
name: quick
image: "${REGISTRY}/quick"
steps:
  - name: first
    docker_run: {image: "${BASE_IMAGE}", command: ["true"]}
"""

SCRIPT = """\
set -eu
ws=$(mktemp -d)
trap 'rm -rf "$ws"' EXIT
git init -q "$ws"
git -C "$ws" fetch -q --no-tags --depth=1 -- "$URL" "$SHA"
git -C "$ws" -c advice.detachedHead=false checkout -q --detach "$SHA" --
docker build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE:$TAG" -t "$IMAGE:$SHORT" "$ws" >/dev/null
docker run --rm "$IMAGE:$TAG" python3 -m pytest -q -p no:cacheprovider inference/tests >/dev/null
docker tag "$IMAGE:$TAG" "$IMAGE:latest"
for t in "$TAG" "$SHORT" latest; do docker push -q "$IMAGE:$t" >/dev/null; done
"""


def full_pipeline() -> str:
    data = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
    # The same three steps the bare script runs: build, the tests in the image, push.
    data["steps"] = [s for s in data["steps"] if s["name"] in ("build", "test", "push")]
    data.pop("environments", None)
    return yaml.safe_dump(data, sort_keys=False)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


class Bed:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.worker: subprocess.Popen[bytes] | None = None
        self.redis = RedisServer(tmp / "redis")
        self.docker = DockerDaemon()
        self.registry = Registry(tmp / "registry")
        try:  # a service that fails to start must not leave the ones before it running
            self.redis.start()
            self.docker.ensure(work=Path("/run/mlship-test"))
            self.base = ensure_base_image(self.docker.host)
            self.registry.start()
            self.origin = GitOrigin(tmp / "git").create()
        except BaseException:
            self.close()
            raise
        self.vars = {"REGISTRY": self.registry.addr, "BASE_IMAGE": self.base}
        self.settings = Settings(redis_url=self.redis.url, docker_host=self.docker.host, workspace=tmp / "ws")
        self.store = Store.from_url(self.redis.url)
        self.queue = build_queue(self.settings)

    def start_worker(self) -> None:
        config = self.tmp / "server.yaml"
        config.write_text(
            yaml.safe_dump({"repositories": {REPO: {"clone_url": self.origin.url}}, "vars": self.vars})
        )
        env = {
            **os.environ,
            "MLSHIP_CONFIG": str(config),
            "MLSHIP_REDIS_URL": self.redis.url,
            "MLSHIP_WORKSPACE": str(self.tmp / "ws"),
            "MLSHIP_DOCKER_HOST": self.docker.host,
            "GITHUB_WEBHOOK_SECRET": "bench",
        }
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def create(self, sha: str) -> Build:
        trig = Trigger(repo=REPO, sha=sha, ref="refs/heads/main", branch="main", kind="push")
        build, _ = self.store.create_build(
            trig,
            pipeline="pipeline.yaml",
            triggered_by="bench",
            enqueue=enqueuer(self.queue, 3600),
            dedup=False,
        )
        return build

    def wait(self, build_id: int, timeout: float = 900) -> Build:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = self.store.get_build(build_id)
            if b.status.finished:
                return b
            time.sleep(0.02)
        raise SystemExit(f"build {build_id} did not finish")

    def close(self) -> None:
        if self.worker:
            self.worker.terminate()
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        self.registry.stop()
        self.redis.stop()
        self.docker.stop()


def pickup_latency(bed: Bed, n: int) -> list[float]:
    sha = bed.origin.commit("main", {"pipeline.yaml": QUICK})
    bed.wait(bed.create(sha).id, 120)  # warm-up: imports, docker client, git
    out = []
    for i in range(n):
        # a new commit per build, as with real merges (committing is outside the measured window)
        sha = bed.origin.commit("main", {"pipeline.yaml": QUICK, "counter.txt": f"{i}\n"})
        time.sleep(0.2)  # the worker is idle, blocked on the queue
        b = bed.wait(bed.create(sha).id, 120)
        if b.status != "success" or not b.steps or b.steps[0].started_at is None:
            raise SystemExit(f"quick build {b.id} ended {b.status}: {b.error}")
        out.append((b.steps[0].started_at - b.created_at) * 1000)
    return out


def script_run(bed: Bed, sha: str, tag: str) -> float:
    env = {
        **os.environ,
        "DOCKER_HOST": bed.docker.host,
        "URL": bed.origin.url,
        "SHA": sha,
        "BASE_IMAGE": bed.base,
        "IMAGE": f"{bed.registry.addr}/house-price",
        "TAG": tag,
        "SHORT": sha[:7],
    }
    t0 = time.monotonic()
    subprocess.run(["bash", "-c", SCRIPT], env=env, check=True)
    return time.monotonic() - t0


def pipeline_run(bed: Bed, sha: str) -> float:
    t0 = time.time()
    b = bed.wait(bed.create(sha).id)
    if b.status != "success":
        raise SystemExit(f"full build {b.id} ended {b.status}: {b.error}\n{bed.store.log_text(b.id)[-2000:]}")
    assert b.finished_at is not None
    return b.finished_at - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--builds", type=int, default=50)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlb-", dir="/tmp") as d:
        bed = Bed(Path(d))
        try:
            bed.start_worker()
            lat = pickup_latency(bed, args.builds)
            print(
                f"pickup latency (delivery accepted -> first step started), {len(lat)} builds, idle worker:"
            )
            print(
                f"  p50 {statistics.median(lat):.1f} ms   p99 {pct(lat, 99):.1f} ms   max {max(lat):.1f} ms"
                "   (goal p50 <= 100 ms, p99 <= 500 ms)"
            )
            sha = bed.origin.commit("main", {"pipeline.yaml": full_pipeline()})
            print("warming the layer cache with one pipeline run ...", flush=True)
            pipeline_run(bed, sha)
            ours: list[float] = []
            bare: list[float] = []
            for i in range(args.pairs):
                order = ["ours", "bare"] if i % 2 == 0 else ["bare", "ours"]
                for who in order:
                    if who == "ours":
                        ours.append(pipeline_run(bed, sha))
                    else:
                        bare.append(script_run(bed, sha, f"bare{i}"))
                print(f"  pair {i + 1}: pipeline {ours[-1]:.2f}s  shell script {bare[-1]:.2f}s", flush=True)
            ratios = [a / b for a, b in zip(ours, bare, strict=True)]
            ratio = statistics.median(ratios)
            print(f"full build+test+push, {args.pairs} interleaved pairs (this machine is shared, so the")
            print("  per-pair ratio's median and the ratio of the fastest runs are the steady figures):")
            print(
                f"  pipeline median {statistics.median(ours):.2f}s min {min(ours):.2f}s   "
                f"bare script median {statistics.median(bare):.2f}s min {min(bare):.2f}s"
            )
            print(
                f"  median per-pair ratio {ratio:.3f}x   fastest/fastest {min(ours) / min(bare):.3f}x   "
                "(goal <= 1.10x)"
            )
            results = {
                "pickup_ms": {"p50": statistics.median(lat), "p99": pct(lat, 99), "all": lat},
                "full_run_s": {
                    "pipeline": ours,
                    "script": bare,
                    "median_pair_ratio": ratio,
                    "min_ratio": min(ours) / min(bare),
                },
            }
            out = ROOT / "bench" / "results"
            out.mkdir(exist_ok=True)
            (out / "pipeline.json").write_text(json.dumps(results, indent=2))
        finally:
            bed.close()


if __name__ == "__main__":
    main()
