"""Webhook intake throughput/latency: this service vs adnanh/webhook, same machine, same run, same payloads.

    .venv/bin/python bench/webhook_bench.py [--connections 16] [--duration 10] [--rounds 3]
                                            [--workers 4] [--web-threads 4] [--modes close,keep-alive]

What it does, all on loopback and in one run:

1. starts a real Redis (``services.RedisServer``: AOF on, noeviction) for this service;
2. starts ``orchestrator web`` (gunicorn, ``--workers/--web-threads``) with one allow-listed
   repository, and ``/usr/bin/webhook`` with one hook whose trigger rule is ``payload-hmac-sha256``
   on ``X-Hub-Signature-256`` and whose command is ``/bin/true`` (a rule mismatch answers 401, so
   a bad signature cannot pass as success);
3. per round, pre-generates N signed, distinct merged-pull-request deliveries (GitHub's payload shape
   from tests/webhooks/payloads, distinct delivery ids and merge shas), one file per wrk thread; both
   servers get exactly these deliveries in that round;
4. drives both with ``wrk`` at the same fixed concurrency and the same Lua script
   (bench/webhook_replay.lua): each wrk thread walks its own slice of the pre-built requests once, so
   the load generator does the same work for both and no delivery is ever sent twice;
5. runs each connection mode (``close``: a TCP connection per delivery, as GitHub delivers;
   ``keep-alive``) for ``--rounds`` rounds, alternating which server goes first, and reports the median
   round of each;
6. as an upper bound for any Python service on this machine, also drives a hello-world WSGI app under
   the same gunicorn configuration (reads the body, answers 202; no HMAC, no JSON, no Redis), in the
   same rounds (``--no-ceiling`` skips it);
7. checks every delivery this service answered 2xx: its record in Redis says queued, points at a build,
   and the build has that delivery's merge sha; builds beyond the 2xx answers are at most the requests
   wrk left in flight when it stopped (one per connection).

Prints a table (deliveries/s, p50, p99, non-2xx) and the throughput ratio per mode; writes
bench/results/webhook.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.github import sign  # noqa: E402
from orchestrator.services import RedisServer, free_port, port_open, wait_for  # noqa: E402
from orchestrator.store import Store  # noqa: E402

LUA = Path(__file__).parent / "webhook_replay.lua"
PAYLOAD = ROOT / "tests" / "webhooks" / "payloads" / "pull_request.closed.merged.json"
RESULTS = Path(__file__).parent / "results" / "webhook.json"
REPO = "acme/house-price"
SECRET = "bench-" + uuid.uuid4().hex
WEBHOOK_OK = "hook accepted"


@dataclass
class Run:
    server: str
    mode: str
    round: int
    requests: int
    ok: int
    non_2xx: int
    socket_errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    wrapped: bool


# -- deliveries -------------------------------------------------------------------------------------


def write_deliveries(directory: Path, n: int, wrk_threads: int, tag: str) -> tuple[str, dict[str, str]]:
    """N signed merged-PR deliveries split over ``wrk_threads`` files; returns (prefix, id → sha)."""
    template = json.loads(PAYLOAD.read_text())
    template["repository"]["full_name"] = REPO
    files = [open(directory / f"{tag}-{t}.txt", "w") for t in range(wrk_threads)]  # noqa: SIM115
    shas: dict[str, str] = {}
    key = SECRET.encode()
    try:
        for i in range(n):
            sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
            delivery = str(uuid.uuid4())
            template["pull_request"]["merge_commit_sha"] = sha
            template["number"] = template["pull_request"]["number"] = i + 1
            body = json.dumps(template, separators=(",", ":"))
            files[i % wrk_threads].write(f"{delivery} {sign(key, body.encode())} {body}\n")
            shas[delivery] = sha
    finally:
        for f in files:
            f.close()
    return str(directory / f"{tag}-"), shas


# -- servers ----------------------------------------------------------------------------------------


@contextmanager
def process(argv: list[str], env: dict[str, str], port: int, log: Path, what: str) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(port), 30, what)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def ours(work: Path, redis_url: str, workers: int, threads: int) -> Iterator[str]:
    port = free_port()
    config = work / "server.yaml"
    config.write_text(json.dumps({
        "redis_url": redis_url, "public_url": f"http://127.0.0.1:{port}",
        "repositories": {REPO: {"clone_url": "git@github.com:acme/house-price.git",
                                "webhook_secrets": ["GITHUB_WEBHOOK_SECRET"]}},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(ORCHESTRATOR_CONFIG=str(config), GITHUB_WEBHOOK_SECRET=SECRET)
    argv = [sys.executable, "-m", "orchestrator", "web", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--threads", str(threads)]
    with process(argv, env, port, work / "web.log", "orchestrator web"):
        yield f"http://127.0.0.1:{port}/webhooks/github"


HELLO = """
def app(environ, start_response):
    environ["wsgi.input"].read()
    body = b'{"verdict": "queued"}'
    start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


@contextmanager
def hello_world(work: Path, workers: int, threads: int) -> Iterator[str]:
    """The ceiling: gunicorn, same workers/threads/worker class, an app that only reads the body."""
    port = free_port()
    (work / "hello_wsgi.py").write_text(HELLO)
    argv = [sys.executable, "-m", "gunicorn", "--chdir", str(work), "-b", f"127.0.0.1:{port}",
            "-w", str(workers), "--threads", str(threads), "-k", "gthread" if threads > 1 else "sync",
            "hello_wsgi:app"]
    with process(argv, dict(os.environ), port, work / "hello.log", "gunicorn hello-world"):
        yield f"http://127.0.0.1:{port}/"


@contextmanager
def adnanh_webhook(work: Path) -> Iterator[str]:
    exe = shutil.which("webhook") or "/usr/bin/webhook"
    port = free_port()
    hooks = work / "hooks.json"
    hooks.write_text(json.dumps([{
        "id": "deploy", "execute-command": "/bin/true", "command-working-directory": str(work),
        "response-message": WEBHOOK_OK, "http-methods": ["POST"],
        "trigger-rule-mismatch-http-response-code": 401,
        "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": SECRET,
                                   "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}},
    }]))
    argv = [exe, "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)]
    with process(argv, dict(os.environ), port, work / "webhook.log", "adnanh/webhook"):
        yield f"http://127.0.0.1:{port}/hooks/deploy"


# -- load -------------------------------------------------------------------------------------------


def drive(url: str, prefix: str, args: argparse.Namespace, out: Path, marker: str) -> dict[str, Any]:
    env = {**os.environ, "BENCH_PREFIX": prefix, "BENCH_OUT": str(out), "BENCH_MARKER": marker,
           "BENCH_CLOSE": "1" if getattr(args, "close", False) else ""}
    argv = ["wrk", "-t", str(args.wrk_threads), "-c", str(args.connections), "-d", f"{args.duration}s",
            "--timeout", "10s", "-s", str(LUA), url]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"wrk failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def to_run(server: str, rnd: int, r: dict[str, Any], mode: str) -> Run:
    seconds = r["duration_us"] / 1e6
    errors = r["errors"]
    return Run(server=server, mode=mode, round=rnd, requests=r["requests"], ok=r["accepted"],
               non_2xx=errors["status"],
               socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
               seconds=round(seconds, 2), rps=round(r["accepted"] / seconds, 1),
               p50_ms=round(r["p50_us"] / 1000, 2), p99_ms=round(r["p99_us"] / 1000, 2), wrapped=r["wrapped"])


def verify(store: Store, ids: list[str], shas: dict[str, str], builds_before: int, in_flight: int) -> None:
    """Every delivery answered 2xx is recorded as queued with a build of its sha.

    wrk stops with up to one request in flight per connection: those may have become builds whose
    answer wrk never read, so at most ``in_flight`` builds more than 2xx answers are allowed.
    """
    missing = []
    for delivery in ids:
        d = store.get_delivery(delivery)
        if d is None or d.verdict != "queued" or d.build_id is None:
            missing.append(delivery)
            continue
        if store.get_build(d.build_id).sha != shas[delivery]:
            missing.append(delivery)
    builds = store.latest_build_id() - builds_before
    if missing or not len(ids) <= builds <= len(ids) + in_flight:
        raise SystemExit(f"verification failed: {len(missing)} answered deliveries without their build; "
                         f"{builds} builds created for {len(ids)} 2xx answers")


# -- main -------------------------------------------------------------------------------------------

MODES = {"close": "Connection: close (a TCP connection per delivery, as GitHub sends them)",
         "keep-alive": "keep-alive (connections reused)"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=16, help="concurrent connections (fixed)")
    p.add_argument("--duration", type=int, default=10, help="seconds per server per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds per connection mode")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--deliveries", type=int, default=60000,
                   help="distinct deliveries per round (both servers get the same ones)")
    p.add_argument("--workers", type=int, default=4, help="gunicorn workers of this service")
    p.add_argument("--web-threads", type=int, default=4, help="threads per gunicorn worker (1 = sync)")
    p.add_argument("--modes", default="close,keep-alive", help="comma-separated: close, keep-alive")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="skip the gunicorn hello-world upper bound")
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes takes {', '.join(MODES)}")
    for program in ("wrk", "webhook"):
        if shutil.which(program) is None and not Path(f"/usr/bin/{program}").exists():
            raise SystemExit(f"{program} is not installed: apt-get install -y {program}")

    work = Path(tempfile.mkdtemp(prefix="mlship-whbench-"))
    redis = RedisServer(work / "redis").start()
    runs: list[Run] = []
    try:
        store = Store.from_url(redis.url)
        with ExitStack() as servers:
            urls = {"mlship": servers.enter_context(ours(work, redis.url, args.workers, args.web_threads)),
                    "webhook": servers.enter_context(adnanh_webhook(work))}
            if args.ceiling:
                urls["hello"] = servers.enter_context(hello_world(work, args.workers, args.web_threads))
            warm(work, urls, args)
            for mode in modes:
                for rnd in range(1, args.rounds + 1):
                    runs.extend(one_round(work, store, urls, args, mode, rnd))
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(runs, args, modes)
    return 0


def marker(server: str) -> str:
    return WEBHOOK_OK if server == "webhook" else '"queued"'


def warm(work: Path, urls: dict[str, str], args: argparse.Namespace) -> None:
    """Imports, connection pools, page cache: a short unmeasured run against each server."""
    short = argparse.Namespace(**{**vars(args), "duration": 2, "close": False})
    for server, url in urls.items():
        prefix, _ = write_deliveries(work, 300 * args.wrk_threads, args.wrk_threads, f"warm-{server}")
        drive(url, prefix, short, work / "warm.json", marker(server))


def one_round(work: Path, store: Store, urls: dict[str, str], args: argparse.Namespace, mode: str,
              rnd: int) -> list[Run]:
    """Both servers, in alternating order, on the same freshly generated deliveries."""
    tag = f"{mode}-r{rnd}"
    prefix, shas = write_deliveries(work, args.deliveries, args.wrk_threads, tag)
    run_args = argparse.Namespace(**{**vars(args), "close": mode == "close"})
    servers = list(urls)  # rotate who goes first, so no server always runs on a warmer/cooler machine
    order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
    out = []
    for server in order:
        before = store.latest_build_id()
        r = drive(urls[server], prefix, run_args, work / f"{tag}-{server}.json", marker(server))
        run = to_run(server, rnd, r, mode)
        if run.wrapped and server != "hello":  # the hello-world keeps no state: replaying is fine
            raise SystemExit(f"{server} used up all {args.deliveries} deliveries ({mode}, round {rnd}): "
                             "raise --deliveries")
        if server == "mlship":
            verify(store, r["ok_ids"], shas, before, args.connections)
        out.append(run)
        print(f"{mode:10} round {rnd} {server:8} {run.rps:8.1f}/s  p50 {run.p50_ms:6.2f} ms  "
              f"p99 {run.p99_ms:6.2f} ms  non-2xx {run.non_2xx}  socket errors {run.socket_errors}",
              flush=True)
    for f in work.glob(f"{tag}-*.txt"):
        f.unlink()
    return out


def _rps(runs: list[Run], server: str, mode: str) -> list[float]:
    return [r.rps for r in runs if (r.server, r.mode) == (server, mode)]


def median_run(runs: list[Run], server: str, mode: str) -> Run:
    mine = sorted((r for r in runs if r.server == server and r.mode == mode), key=lambda r: r.rps)
    return mine[len(mine) // 2]


def report(runs: list[Run], args: argparse.Namespace, modes: list[str]) -> None:
    cpus = os.cpu_count()
    summary: dict[str, Any] = {}
    print()
    print(f"Signed merged-PR deliveries on loopback, {args.connections} connections, {args.duration}s x "
          f"{args.rounds} rounds per mode, {cpus} CPUs; median round of each")
    print("| connections | server | deliveries/s | p50 ms | p99 ms | non-2xx | socket errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    kind = "gthread" if args.web_threads > 1 else "sync"
    names = {"mlship": f"mlship (gunicorn {args.workers}x{args.web_threads} {kind}, Redis)",
             "webhook": "adnanh/webhook 2.8 (runs /bin/true)",
             "hello": f"ceiling: gunicorn {args.workers}x{args.web_threads} {kind} hello-world (reads, 202)"}
    servers = [s for s in names if any(r.server == s for r in runs)]
    for mode in modes:
        medians = {s: median_run(runs, s, mode) for s in servers}
        for server, r in medians.items():
            print(f"| {mode} | {names[server]} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                  f"{r.non_2xx} | {r.socket_errors} |")
        summary[mode] = {"ratio": round(medians["mlship"].rps / medians["webhook"].rps, 3),
                         **{s: asdict(r) for s, r in medians.items()}}
        if "hello" in medians:
            summary[mode]["hello_vs_webhook"] = round(medians["hello"].rps / medians["webhook"].rps, 3)
            summary[mode]["mlship_vs_hello"] = round(medians["mlship"].rps / medians["hello"].rps, 3)
    print()
    for mode in modes:
        rounds = {s: _rps(runs, s, mode) for s in servers}
        print(f"ratio mlship / webhook throughput, {MODES[mode]}: {summary[mode]['ratio']:.2f}x "
              f"(rounds: {rounds['mlship']} vs {rounds['webhook']})")
        if "hello" in rounds:
            print(f"  ceiling, gunicorn hello-world / webhook: {summary[mode]['hello_vs_webhook']:.2f}x "
                  f"(rounds: {rounds['hello']}); mlship reaches {summary[mode]['mlship_vs_hello']:.0%} of it")
    print("every delivery mlship answered 2xx was verified in Redis: record queued, build with its merge sha")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": "python bench/webhook_bench.py " + " ".join(sys.argv[1:]), "args": vars(args),
        "cpus": cpus,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average": os.getloadavg(), "summary": summary,
        "runs": [asdict(r) for r in runs],
        "rps_stdev": {f"{s}/{m}": round(statistics.pstdev(_rps(runs, s, m)), 1)
                      for s in servers for m in modes},
    }, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
