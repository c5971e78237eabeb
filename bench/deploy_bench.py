"""Failed requests and p99 latency under constant load during a redeploy, a rollback, and the seed's
stop-and-run, all on the same machine, image and load.

    .venv/bin/python bench/deploy_bench.py [--rate 100] [--rounds 1]
    .venv/bin/python bench/deploy_bench.py --only edge-cost [--cost-rounds 5] [--seconds 5] [--app-threads 4]

Starts the real test bed (dockerd, registry, redis, one sshd host), builds the example image (root
Dockerfile) as builds 1 and 2, then measures, each under ``--rate`` GET /ready per second on a new
connection each:

- mlship redeploy: build 1 → build 2 through the deploy step (edge proxy swap);
- mlship rollback: build 2 → build 1 through request_rollback and the runner;
- seed stop-and-run: ``docker stop old; docker rm old; docker run -d -p PORT:5000 ... new`` over the
  same SSH connection (what the seed's Jenkins job does, with the stop it forgot added);
- the edge's own cost (bench/edge_cost.py; ``--only edge-cost`` measures just this): GET /ready from
  ``--clients`` keep-alive connections, ``--cost-rounds`` interleaved rounds of ``--seconds`` per
  path, with the Python client and with wrk (``--cost-client``): straight to the app container (its
  bridge IP), through the HAProxy edge (the edge container's IP), through the published port on
  127.0.0.1 (docker-proxy plus the edge) and on the host's address (Docker's DNAT plus the edge, the
  way clients on other machines come in). Medians, paired differences to the direct path, CPU per
  request of client, app, edge and the whole machine. Goals: ≤ 0.3 ms added at p50, ≥ 0.9x.

Every daemon it starts (registry, redis, sshd; dockerd only if none was running) is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import edge_cost as cost
from orchestrator import Runtime
from orchestrator.build.queue import build_queue
from orchestrator.build.runner import run_build
from orchestrator.deploy.haproxy import EDGE_PORT
from orchestrator.deploy.policy import request_rollback
from orchestrator.deploy.ssh import RemoteHost as Ssh
from orchestrator.deploy.ssh import Target, load_private_key
from orchestrator.devstack.services import (
    DockerDaemon,
    RedisServer,
    Registry,
    SshdHost,
    ensure_base_image,
    free_port,
    keygen,
)
from orchestrator.store import Store
from tests.deploy.helpers import (
    REPO,
    DeployEnv,
    Load,
    build_example_images,
    cleanup,
    make_model_volume,
    test_settings,
    wait_http,
)

SETTLE = 1.0  # seconds of load before and after each operation


class _Hosts:
    def __init__(self, host: SshdHost, key: Path, known: Path) -> None:
        self.hosts = {"qa": host, "prod": host}
        self.client_key = key
        self.known_hosts = known

    def __getitem__(self, name: str) -> SshdHost:
        return self.hosts[name]


def measure(url: str, rate: float, action: object) -> dict[str, object]:
    load = Load(url, rate=rate)
    load.start()
    time.sleep(SETTLE)
    t0 = time.monotonic()
    action()  # type: ignore[operator]
    took = time.monotonic() - t0
    time.sleep(SETTLE)
    result = load.stop()
    result["operation_s"] = round(took, 1)
    return result


def edge_cost(
    client: object, env: DeployEnv, clients: int, seconds: float, rounds: int, tools: list[str]
) -> dict[str, dict[str, dict[str, object]]]:
    """Straight to the container vs through the edge vs through the published port, same client and
    app container, interleaved rounds (bench/edge_cost.py), for each client in ``tools``."""
    net = f"{env.name}-net"

    def container(name: str) -> Any:
        return client.containers.get(name)  # type: ignore[attr-defined]

    def ip(name: str) -> str:
        return str(container(name).attrs["NetworkSettings"]["Networks"][net]["IPAddress"])

    paths = {
        "direct to container": (ip(f"{env.name}-b1"), 5000),
        "through HAProxy edge": (ip(f"{env.name}-edge"), EDGE_PORT),
        # Docker's userland proxy (docker-proxy) carries connections to 127.0.0.1; clients on other
        # machines come in on the host's address, which Docker forwards by DNAT, without docker-proxy.
        "published, 127.0.0.1": ("127.0.0.1", env.publish),
    }
    address = cost.host_address()
    if address:
        paths["published, host address"] = (address, env.publish)
    accounts = {"app": container(f"{env.name}-b1").id, "edge": container(f"{env.name}-edge").id}
    out: dict[str, dict[str, dict[str, object]]] = {}
    for tool in tools:
        runs = cost.measure(tool, paths, clients, seconds, rounds, accounts)
        out[tool] = cost.summarize(runs, "direct to container")
    return out


def seed_stop_and_run(ssh: Ssh, image: str, old: str, new: str, port: int, volume: str) -> None:
    for argv in (
        ["docker", "stop", old],
        ["docker", "rm", old],
        [
            "docker",
            "run",
            "-d",
            "--name",
            new,
            "-p",
            f"{port}:5000",
            "-v",
            f"{volume}:/models:ro",
            "-e",
            "WEB_CONCURRENCY=2",
            image,
        ],
    ):
        assert ssh.run(argv).exit_code == 0, argv
    wait_http(f"http://127.0.0.1:{port}/ready", 60)  # the seed does not wait; we wait to stop the clock


def _seed_swap(ssh: Ssh, image: str, old: str, new: str, port: int, volume: str) -> object:
    return lambda: seed_stop_and_run(ssh, image, old, new, port, volume)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--only",
        choices=["edge-cost"],
        help="edge-cost: deploy build 1, measure the edge's cost, nothing else",
    )
    ap.add_argument("--clients", type=int, default=4, help="keep-alive connections for the edge cost")
    ap.add_argument("--seconds", type=float, default=5.0, help="per path and round, for the edge cost")
    ap.add_argument("--cost-rounds", type=int, default=5, help="interleaved rounds per path (edge cost)")
    ap.add_argument(
        "--cost-client",
        choices=["python", "wrk", "both"],
        default="both",
        help="the edge cost's load generator (see bench/edge_cost.py)",
    )
    ap.add_argument(
        "--app-threads",
        type=int,
        default=1,
        help="GUNICORN_THREADS of the app (1: sync workers, a connection per request; >1: keep-alive)",
    )
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "deploy.json")
    return ap.parse_args()


def _swaps(
    env: DeployEnv, settings: Any, store: Store, rate: float, results: dict[str, list[dict[str, object]]]
) -> None:
    """Redeploy (build 1 → 2) and rollback (2 → 1) under ``rate`` requests per second."""
    b2 = env.new_build(2)
    results["mlship redeploy"].append(measure(env.url, rate, lambda: env.deploy(b2)))
    rt = Runtime(settings, store, build_queue(settings))
    rb = request_rollback(rt, REPO, "qa", "bench")

    def rollback() -> None:
        run_build(env.settings, env.store, rb.id)
        assert env.store.get_build(rb.id).status == "success", env.store.log_text(rb.id)[-3000:]

    results["mlship rollback"].append(measure(env.url, rate, rollback))


def _seed(host: SshdHost, key: Path, known: Path, images: Any, volume: str, rate: float) -> dict[str, object]:
    """The seed's way, same host, image, volume and load."""
    port = free_port()
    old, new = f"seed-{uuid.uuid4().hex[:6]}", f"seed-{uuid.uuid4().hex[:6]}"
    ssh = Ssh(Target("127.0.0.1", host.port, host.user), load_private_key(key.read_text()), known)
    ssh.connect()
    seed_swap = _seed_swap(ssh, images.refs[2], old, new, port, volume)
    try:
        argv = ["docker", "run", "-d", "--name", old, "-p", f"{port}:5000", "-v", f"{volume}:/models:ro"]
        res = ssh.run([*argv, "-e", "WEB_CONCURRENCY=2", images.refs[1]], capture=True)
        assert res.exit_code == 0, f"the seed's docker run failed: {res}"
        try:
            wait_http(f"http://127.0.0.1:{port}/ready", 60)
        except AssertionError:
            print(ssh.run(["docker", "logs", "--tail", "30", old], capture=True), flush=True)
            raise
        return measure(f"http://127.0.0.1:{port}", rate, seed_swap)
    finally:
        for c in (old, new):
            ssh.run(["docker", "rm", "-f", c])
        ssh.close()


def _print(args: argparse.Namespace, results: dict[str, list[dict[str, object]]]) -> None:
    if args.only is None:
        print(
            f"\nconstant load: {args.rate:g} GET /ready per second, a new connection each; "
            f"{SETTLE:g}s of load before and after the operation\n"
        )
        print(f"{'approach':<20} {'requests':>9} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'op s':>6}")
        for name, rows in results.items():
            for r in rows:
                print(
                    f"{name:<20} {r['requests']:>9} {r['failed']:>7} {r['p50_ms']:>8} {r['p99_ms']:>8} "
                    f"{r['operation_s']:>6}"
                )


def main() -> int:
    args = _args()
    tools = ["python", "wrk"] if args.cost_client == "both" else [args.cost_client]
    work = Path(tempfile.mkdtemp(prefix="mlb-", dir="/tmp"))
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
    results: dict[str, list[dict[str, object]]] = {
        "mlship redeploy": [],
        "mlship rollback": [],
        "seed stop-and-run": [],
    }
    volume = ""
    costs: dict[str, Any] = {}
    try:
        print("building the example image (builds 1 and 2)...", flush=True)
        base = ensure_base_image(daemon.host)
        images = build_example_images(client, base, registry.addr)
        volume = make_model_volume(client, images.refs[1])
        hosts = _Hosts(host, key, known)
        for _ in range(1 if args.only else args.rounds):
            store = Store.from_url(redis.url)
            store.r.flushall()
            settings = test_settings(redis.url, hosts, work / "ws")
            env = DeployEnv(
                store=store,
                settings=settings,
                hosts=hosts,
                images=images,
                volume=volume,
                edge_base_image=base,
            )
            if args.app_threads > 1:  # gunicorn's gthread workers keep connections alive (sync ones close)
                env.env["GUNICORN_THREADS"] = str(args.app_threads)
            try:
                env.deploy(env.new_build(1))
                wait_http(env.url + "/ready")
                if not costs:
                    costs = edge_cost(client, env, args.clients, args.seconds, args.cost_rounds, tools)
                    for tool, summary in costs.items():  # now: a later failure must not lose them
                        print("\n" + cost.report(tool, summary, args.clients, args.seconds), flush=True)
                if args.only is None:
                    _swaps(env, settings, store, args.rate, results)
            finally:
                cleanup(client, env.name)
            if args.only is None:
                results["seed stop-and-run"].append(_seed(host, key, known, images, volume, args.rate))
    finally:
        host.stop()
        registry.stop()
        redis.stop()
        if volume:
            client.volumes.get(volume).remove(force=True)
        client.close()
        daemon.stop()  # only if this run started it
    _print(args, results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rate": args.rate, "results": results, "edge_cost": costs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
