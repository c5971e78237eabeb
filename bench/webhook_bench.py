"""Webhook intake: durably queued deliveries per second and p99, this service vs adnanh/webhook.

    .venv/bin/python bench/webhook_bench.py [--connections 16] [--duration 10] [--rounds 3]
                                            [--workers 4] [--web-threads 4] [--modes close]

The goal (issue 14): durably queued deliveries per second >= 1.0x adnanh/webhook's, and p99 <= 0.5x
its p99, with a new TCP connection per delivery (``close``, as GitHub delivers). Raw answers per
second are reported as information only.

What it does, all on loopback and in one run:

1. starts a real Redis (``services.RedisServer``: AOF on, ``appendfsync everysec``) for each run of this
   service (``--compare-with`` adds one from another checkout, e.g. the commit before a change);
2. starts ``orchestrator web`` (gunicorn, ``--workers/--web-threads``) with one allow-listed
   repository, and ``/usr/bin/webhook`` twice with one hook whose trigger rule is
   ``payload-hmac-sha256`` on ``X-Hub-Signature-256`` and whose command is ``/bin/true`` (a rule
   mismatch answers 401, so a bad signature cannot pass as success): as configured by default
   (answers at once, runs the command afterwards) and with ``include-command-output-in-response``
   (answers once the command has exited; ``--no-sync-peer`` skips it);
3. per round, pre-generates N signed, distinct merged-pull-request deliveries (GitHub's payload shape
   from tests/webhooks/payloads, distinct delivery ids and merge shas), one file per wrk thread; every
   server gets exactly these deliveries in that round;
4. drives each with ``wrk`` at the same fixed concurrency and the same Lua script
   (bench/webhook_replay.lua): each wrk thread walks its own slice of the pre-built requests once, so
   the load generator does the same work for all and no delivery is ever sent twice;
5. after each server's run, waits until that server has finished what it deferred (its CPU time,
   children included, stops growing: ``drain``) before the next starts. *Durably queued per second*
   is acknowledged deliveries / (run + drain): for this service every acknowledged delivery is
   checked in Redis (step 8), for adnanh/webhook it counts the hook runs it still owed;
6. runs each connection mode (``close``: a TCP connection per delivery; ``keep-alive`` on request)
   for ``--rounds`` rounds, rotating which server goes first, and reports the median round of each;
7. as an upper bound for any Python service on this machine, also drives a hello-world WSGI app under
   the same gunicorn configuration (reads the body, answers 202; no HMAC, no JSON, no Redis), in the
   same rounds (``--no-ceiling`` skips it);
8. checks every delivery this service answered 2xx: its record says queued and points at a build with
   that delivery's merge sha, and the build's RQ job is in the queue (read with RQ's public API:
   the queue's job ids, each job's ticket resolved to its build); builds beyond the 2xx answers are at
   most the requests wrk left in flight when it stopped (one per connection). A failed check stops
   the run: a rate is only reported for deliveries that are really queued.

Prints a table (answered/s, durably queued/s, drain, p50, p99, non-2xx) and the ratios per mode;
writes bench/results/webhook.json.
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
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rq import Queue

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.build.queue import rq_connection  # noqa: E402
from orchestrator.config import Settings  # noqa: E402
from orchestrator.devstack.services import RedisServer, free_port, port_open, wait_for  # noqa: E402
from orchestrator.intake.github import sign  # noqa: E402
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
    drain_s: float = 0.0  # after the load stopped, until the server's deferred work was done
    done_rps: float = 0.0  # accepted / (seconds + drain_s): durably queued (or hook run) per second


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


@dataclass
class Server:
    url: str
    pid: int
    marker: str  # a 2xx body containing it counts as accepted
    store: Store | None = None  # mlship: its own Redis, to verify what it acknowledged
    queue: Queue | None = None


@contextmanager
def process(argv: list[str], env: dict[str, str], port: int, log: Path, what: str) -> Iterator[int]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(port), 30, what)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def ours(work: Path, workers: int, threads: int, root: Path | None = None) -> Iterator[Server]:
    """``orchestrator web`` of this checkout, or of the checkout at ``root`` (``--compare-with``), each
    with a Redis of its own (every server gets the same deliveries: one Redis would answer the second
    server's from the first one's records)."""
    label = root.name if root else "this"
    redis = RedisServer(work / f"redis-{label}").start()
    try:
        with _web(work, redis.url, workers, threads, root, label) as server:
            server.store = Store.from_url(redis.url)
            server.queue = Queue("builds", connection=rq_connection(Settings(redis_url=redis.url)))
            yield server
    finally:
        redis.stop()


@contextmanager
def _web(
    work: Path, redis_url: str, workers: int, threads: int, root: Path | None, label: str
) -> Iterator[Server]:
    port = free_port()
    config = work / f"server-{label}.yaml"
    config.write_text(
        json.dumps(
            {
                "redis_url": redis_url,
                "public_url": f"http://127.0.0.1:{port}",
                "repositories": {
                    REPO: {
                        "clone_url": "git@github.com:acme/house-price.git",
                        "webhook_secrets": ["GITHUB_WEBHOOK_SECRET"],
                    }
                },
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(ORCHESTRATOR_CONFIG=str(config), GITHUB_WEBHOOK_SECRET=SECRET)
    if root is not None:  # another checkout's package first on the path (same venv, same libraries)
        env["PYTHONPATH"] = str(root)
    argv = [
        sys.executable,
        "-m",
        "orchestrator",
        "web",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]
    log = work / f"web-{label}.log"
    with process(argv, env, port, log, "orchestrator web") as pid:
        yield Server(f"http://127.0.0.1:{port}/webhooks/github", pid, '"queued"')


HELLO = """
def app(environ, start_response):
    environ["wsgi.input"].read()
    body = b'{"verdict": "queued"}'
    start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


@contextmanager
def hello_world(work: Path, workers: int, threads: int) -> Iterator[Server]:
    """The ceiling: gunicorn, same workers/threads/worker class, an app that only reads the body."""
    port = free_port()
    (work / "hello_wsgi.py").write_text(HELLO)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--chdir",
        str(work),
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(workers),
        "--threads",
        str(threads),
        "-k",
        "gthread" if threads > 1 else "sync",
        "hello_wsgi:app",
    ]
    with process(argv, dict(os.environ), port, work / "hello.log", "gunicorn hello-world") as pid:
        yield Server(f"http://127.0.0.1:{port}/", pid, '"queued"')


@contextmanager
def adnanh_webhook(work: Path, sync: bool = False) -> Iterator[Server]:
    """adnanh/webhook with one HMAC-checked hook that runs /bin/true.

    By default webhook answers at once and runs the command afterwards in a goroutine; with
    ``sync`` (``include-command-output-in-response``) it answers once the command has exited.
    """
    exe = shutil.which("webhook") or "/usr/bin/webhook"
    port = free_port()
    name = "hooks-sync.json" if sync else "hooks.json"
    hook: dict[str, Any] = {
        "id": "deploy",
        "execute-command": "/bin/true",
        "command-working-directory": str(work),
        "response-message": WEBHOOK_OK,
        "http-methods": ["POST"],
        "trigger-rule-mismatch-http-response-code": 401,
        "trigger-rule": {
            "match": {
                "type": "payload-hmac-sha256",
                "secret": SECRET,
                "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
            }
        },
    }
    if sync:  # the answer is then /bin/true's (empty) output: any 2xx counts (a bad signature is 401)
        hook["include-command-output-in-response"] = True
    (work / name).write_text(json.dumps([hook]))
    argv = [exe, "-hooks", str(work / name), "-ip", "127.0.0.1", "-port", str(port)]
    with process(argv, dict(os.environ), port, work / f"{name}.log", "adnanh/webhook") as pid:
        yield Server(f"http://127.0.0.1:{port}/hooks/deploy", pid, "" if sync else WEBHOOK_OK)


def cpu_ticks(pid: int) -> int:
    """CPU time (clock ticks) of ``pid`` and its children, live and reaped."""
    total = 0
    pids = [pid]
    with suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total


def drain(pid: int, window: float = 0.25, timeout: float = 120.0) -> float:
    """Seconds until the server has finished the work it deferred past its answers: its CPU time
    (children included) grows by at most one tick in ``window``. adnanh/webhook answers before
    it runs the hook, so its backlog of /bin/true runs goes on after the load stops; this keeps
    that work out of the next server's measurement and counts it against webhook's own time."""
    start = time.monotonic()
    before = cpu_ticks(pid)
    while time.monotonic() - start < timeout:
        time.sleep(window)
        now = cpu_ticks(pid)
        if now - before <= 1:
            return max(0.0, time.monotonic() - start - window)
        before = now
    raise SystemExit(f"server {pid} still busy {timeout:.0f} s after the load stopped")


# -- load -------------------------------------------------------------------------------------------


def drive(url: str, prefix: str, args: argparse.Namespace, out: Path, marker: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "BENCH_PREFIX": prefix,
        "BENCH_OUT": str(out),
        "BENCH_MARKER": marker,
        "BENCH_CLOSE": "1" if getattr(args, "close", False) else "",
    }
    argv = [
        "wrk",
        "-t",
        str(args.wrk_threads),
        "-c",
        str(args.connections),
        "-d",
        f"{args.duration}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"wrk failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def to_run(server: str, rnd: int, r: dict[str, Any], mode: str, drain_s: float) -> Run:
    seconds = r["duration_us"] / 1e6
    errors = r["errors"]
    return Run(
        server=server,
        mode=mode,
        round=rnd,
        requests=r["requests"],
        ok=r["accepted"],
        non_2xx=errors["status"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        seconds=round(seconds, 2),
        rps=round(r["accepted"] / seconds, 1),
        p50_ms=round(r["p50_us"] / 1000, 2),
        p99_ms=round(r["p99_us"] / 1000, 2),
        wrapped=r["wrapped"],
        drain_s=round(drain_s, 2),
        done_rps=round(r["accepted"] / (seconds + drain_s), 1),
    )


def verify(
    store: Store, queue: Queue, ids: list[str], shas: dict[str, str], builds_before: int, in_flight: int
) -> None:
    """Every delivery answered 2xx is durably queued: recorded as queued, with a build of its sha whose
    RQ job waits in the queue (no worker runs in this bench, so every job is still there).

    wrk stops with up to one request in flight per connection: those may have become builds whose
    answer wrk never read, so at most ``in_flight`` builds more than 2xx answers are allowed.
    """
    # Pipelined reads (the store's key names, its client): tens of thousands of jobs per run.
    pipe = store.r.pipeline(transaction=False)
    for job_id in queue.get_job_ids():
        pipe.get(store.k.ticket(job_id.removeprefix("build-")))
    queued = {int(v) for v in pipe.execute() if v}
    pipe = store.r.pipeline(transaction=False)
    for delivery in ids:
        pipe.hmget(store.k.delivery(delivery), "verdict", "build_id")
    records = pipe.execute()
    pipe = store.r.pipeline(transaction=False)
    for _, build_id in records:
        pipe.hget(store.k.build(int(build_id or 0)), "sha")
    build_shas = pipe.execute()
    missing = [
        delivery
        for delivery, (verdict, build_id), sha in zip(ids, records, build_shas, strict=True)
        if verdict != "queued" or not build_id or int(build_id) not in queued or sha != shas[delivery]
    ]
    builds = store.latest_build_id() - builds_before
    if missing or not len(ids) <= builds <= len(ids) + in_flight:
        raise SystemExit(
            f"verification failed: {len(missing)} answered deliveries without their build or job; "
            f"{builds} builds created for {len(ids)} 2xx answers"
        )


# -- main -------------------------------------------------------------------------------------------

MODES = {
    "close": "Connection: close (a TCP connection per delivery, as GitHub sends them)",
    "keep-alive": "keep-alive (connections reused)",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=16, help="concurrent connections (fixed)")
    p.add_argument("--duration", type=int, default=10, help="seconds per server per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds per connection mode")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument(
        "--deliveries",
        type=int,
        default=60000,
        help="distinct deliveries per round (both servers get the same ones)",
    )
    p.add_argument("--workers", type=int, default=4, help="gunicorn workers of this service")
    p.add_argument("--web-threads", type=int, default=4, help="threads per gunicorn worker (1 = sync)")
    p.add_argument("--modes", default="close", help="comma-separated: close, keep-alive")
    p.add_argument(
        "--no-ceiling", dest="ceiling", action="store_false", help="skip the gunicorn hello-world upper bound"
    )
    p.add_argument(
        "--compare-with",
        metavar="CHECKOUT",
        help="also run orchestrator web from another checkout (e.g. a worktree at an older commit)",
    )
    p.add_argument(
        "--no-sync-peer",
        dest="sync_peer",
        action="store_false",
        help="skip adnanh/webhook in its answer-after-the-command mode",
    )
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes takes {', '.join(MODES)}")
    for program in ("wrk", "webhook"):
        if shutil.which(program) is None and not Path(f"/usr/bin/{program}").exists():
            raise SystemExit(f"{program} is not installed: apt-get install -y {program}")

    work = Path(tempfile.mkdtemp(prefix="mlship-whbench-"))
    runs: list[Run] = []
    try:
        with ExitStack() as stack:
            servers = {
                "mlship": stack.enter_context(ours(work, args.workers, args.web_threads)),
                "webhook": stack.enter_context(adnanh_webhook(work)),
            }
            if args.compare_with:
                servers["mlship-before"] = stack.enter_context(
                    ours(work, args.workers, args.web_threads, Path(args.compare_with).resolve())
                )
            if args.sync_peer:
                servers["webhook-sync"] = stack.enter_context(adnanh_webhook(work, sync=True))
            if args.ceiling:
                servers["hello"] = stack.enter_context(hello_world(work, args.workers, args.web_threads))
            warm(work, servers, args)
            for mode in modes:
                for rnd in range(1, args.rounds + 1):
                    runs.extend(one_round(work, servers, args, mode, rnd))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(runs, args, modes)
    return 0


def warm(work: Path, servers: dict[str, Server], args: argparse.Namespace) -> None:
    """Imports, connection pools, page cache: a short unmeasured run against each server."""
    short = argparse.Namespace(**{**vars(args), "duration": 2, "close": False})
    for name, server in servers.items():
        prefix, _ = write_deliveries(work, 300 * args.wrk_threads, args.wrk_threads, f"warm-{name}")
        drive(server.url, prefix, short, work / "warm.json", server.marker)
        drain(server.pid)


def one_round(
    work: Path,
    servers: dict[str, Server],
    args: argparse.Namespace,
    mode: str,
    rnd: int,
) -> list[Run]:
    """Every server, in rotating order, on the same freshly generated deliveries; each starts only
    when the one before has finished all its work (see ``drain``)."""
    tag = f"{mode}-r{rnd}"
    prefix, shas = write_deliveries(work, args.deliveries, args.wrk_threads, tag)
    run_args = argparse.Namespace(**{**vars(args), "close": mode == "close"})
    names = list(servers)  # rotate who goes first, so no server always runs on a warmer/cooler machine
    order = names[rnd % len(names) :] + names[: rnd % len(names)]
    out = []
    for name in order:
        server = servers[name]
        before = server.store.latest_build_id() if server.store else 0
        r = drive(server.url, prefix, run_args, work / f"{tag}-{name}.json", server.marker)
        run = to_run(name, rnd, r, mode, drain(server.pid))
        if run.wrapped and name != "hello":  # the hello-world keeps no state: replaying is fine
            raise SystemExit(
                f"{name} used up all {args.deliveries} deliveries ({mode}, round {rnd}): raise --deliveries"
            )
        if server.store is not None and server.queue is not None:
            verify(server.store, server.queue, r["ok_ids"], shas, before, args.connections)
        out.append(run)
        print(
            f"{mode:10} round {rnd} {name:12} {run.rps:8.1f}/s answered, {run.done_rps:8.1f}/s queued "
            f"(drain {run.drain_s:5.2f} s)  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  "
            f"non-2xx {run.non_2xx}  socket errors {run.socket_errors}",
            flush=True,
        )
    for f in work.glob(f"{tag}-*.txt"):
        f.unlink()
    return out


def _values(runs: list[Run], server: str, mode: str, key: str = "rps") -> list[float]:
    return [getattr(r, key) for r in runs if (r.server, r.mode) == (server, mode)]


def median_run(runs: list[Run], server: str, mode: str, key: str = "rps") -> Run:
    mine = sorted((r for r in runs if r.server == server and r.mode == mode), key=lambda r: getattr(r, key))
    return mine[len(mine) // 2]


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def report(runs: list[Run], args: argparse.Namespace, modes: list[str]) -> None:
    cpus = os.cpu_count()
    summary: dict[str, Any] = {}
    print()
    print(
        f"Signed merged-PR deliveries on loopback, {args.connections} connections, {args.duration}s x "
        f"{args.rounds} rounds per mode, {cpus} CPUs; median round of each. 'queued/s': acknowledged "
        "deliveries whose build and RQ job are in Redis (mlship) or whose hook has run (webhook), "
        "per second of load + drain"
    )
    print(
        "| connections | server | queued/s | answered/s (info) | drain s | p50 ms | p99 ms | non-2xx | "
        "socket errors |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    kind = "gthread" if args.web_threads > 1 else "sync"
    names = {
        "mlship": f"mlship (gunicorn {args.workers}x{args.web_threads} {kind}, Redis)",
        "mlship-before": f"mlship at {args.compare_with} (same gunicorn, its own Redis)",
        "webhook": "adnanh/webhook 2.8 (runs /bin/true after answering)",
        "webhook-sync": "adnanh/webhook 2.8 (answers after /bin/true ran)",
        "hello": f"ceiling: gunicorn {args.workers}x{args.web_threads} {kind} hello-world (reads, 202)",
    }
    servers = [s for s in names if any(r.server == s for r in runs)]
    for mode in modes:
        done = {s: median_run(runs, s, mode, "done_rps") for s in servers}
        answered = {s: median_run(runs, s, mode) for s in servers}
        p99 = {s: median_run(runs, s, mode, "p99_ms") for s in servers}
        for server in servers:
            r = p99[server]
            print(
                f"| {mode} | {names[server]} | {done[server].done_rps:.0f} | {answered[server].rps:.0f} | "
                f"{done[server].drain_s:.2f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.non_2xx} | "
                f"{r.socket_errors} |"
            )
        m = summary[mode] = {
            "queued_ratio": _ratio(done["mlship"].done_rps, done["webhook"].done_rps),
            "p99_ratio": _ratio(p99["mlship"].p99_ms, p99["webhook"].p99_ms),
            "answered_ratio": _ratio(answered["mlship"].rps, answered["webhook"].rps),
            **{s: asdict(r) for s, r in done.items()},
        }
        if "mlship-before" in done:
            m["before_queued_ratio"] = _ratio(done["mlship-before"].done_rps, done["webhook"].done_rps)
            m["before_p99_ratio"] = _ratio(p99["mlship-before"].p99_ms, p99["webhook"].p99_ms)
        if "hello" in done:
            m["mlship_vs_hello"] = _ratio(answered["mlship"].rps, answered["hello"].rps)
    print()
    for mode in modes:
        m = summary[mode]
        print(f"{MODES[mode]}:")
        print(
            f"  durably queued per second, mlship / webhook: {m['queued_ratio']:.2f}x (goal >= 1.0; rounds: "
            f"{_values(runs, 'mlship', mode, 'done_rps')} vs {_values(runs, 'webhook', mode, 'done_rps')})"
        )
        print(
            f"  p99, mlship / webhook: {m['p99_ratio']:.2f}x (goal <= 0.5; rounds: "
            f"{_values(runs, 'mlship', mode, 'p99_ms')} vs {_values(runs, 'webhook', mode, 'p99_ms')} ms)"
        )
        print(
            f"  information: answers per second, mlship / webhook: {m['answered_ratio']:.2f}x (rounds: "
            f"{_values(runs, 'mlship', mode)} vs {_values(runs, 'webhook', mode)})"
        )
        if "before_queued_ratio" in m:
            before = (
                _values(runs, "mlship-before", mode, "done_rps"),
                _values(runs, "mlship-before", mode, "p99_ms"),
            )
            print(
                f"  the same for {args.compare_with}: {m['before_queued_ratio']:.2f}x queued/s, "
                f"{m['before_p99_ratio']:.2f}x p99 (rounds: {before[0]}/s, {before[1]} ms)"
            )
        if "webhook-sync" in servers:
            print(
                f"  information: webhook answering after its hook ran: {_values(runs, 'webhook-sync', mode)}"
            )
        if "mlship_vs_hello" in m:
            print(
                f"  information: mlship answers {m['mlship_vs_hello']:.0%} of the gunicorn hello-world's rate"
            )
    print(
        "every delivery mlship answered 2xx was verified in Redis: queued, build of its sha, RQ job waiting"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": "python bench/webhook_bench.py " + " ".join(sys.argv[1:]),
                "args": vars(args),
                "cpus": cpus,
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                "load_average": os.getloadavg(),
                "summary": summary,
                "runs": [asdict(r) for r in runs],
                "rps_stdev": {
                    f"{s}/{m}": round(statistics.pstdev(_values(runs, s, m)), 1)
                    for s in servers
                    for m in modes
                },
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
