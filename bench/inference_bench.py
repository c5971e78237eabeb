"""Inference throughput/latency: this service vs ``mlflow models serve``, same model, same workers.

    .venv/bin/python bench/inference_bench.py [--workers 2] [--connections 16] [--duration 20]

What it does, all on this machine and in one run:

1. trains the example model (``inference.train``: 100-tree random forest, 18 features);
2. saves the same fitted estimator as an MLflow model (``mlflow.sklearn.save_model``) using a
   separate venv that holds mlflow only for this benchmark (``bench/.mlflow-venv``, created with
   ``python3 -m venv bench/.mlflow-venv && bench/.mlflow-venv/bin/pip install mlflow
   scikit-learn==<ours> numpy==<ours>`` if missing; it is gitignored);
3. starts this service under gunicorn and ``mlflow models serve --env-manager local`` with the
   same number of workers (W=2 on the 2-core build machine);
4. drives both with ``wrk`` at fixed concurrency with the seed's request wrapped as
   ``{"dataframe_records": [row]}`` (the one body both accept) and ``Connection: close``: with
   keep-alive, mlflow's uvicorn stalls ~40 ms per request (delayed ACK/Nagle interplay), which
   would flatter us unfairly, so both pay a TCP connect per request;
5. sends one 10,000-row batch to this service and compares with in-process ``model.predict`` on
   the same rows (median of several).

Prints throughput, p50 and p99 for both and the ratios; writes ``bench/results/inference.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# ruff: noqa: S310 - urllib only opens loopback URLs of servers this script starts
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference import train  # noqa: E402
from inference.schema import FEATURES, SEED_EXAMPLE  # noqa: E402

MLFLOW_VENV = ROOT / "bench" / ".mlflow-venv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@contextmanager
def running(cmd: list[str], env: dict[str, str], ready_url: str, log: Path) -> Iterator[None]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            wait_http(ready_url, proc)
            yield
        finally:
            # The whole process group: `mlflow models serve` runs its server as a child process,
            # which a SIGTERM to the CLI alone would leave running.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def ensure_mlflow_venv() -> Path:
    python = MLFLOW_VENV / "bin" / "python"
    if not python.exists():
        import numpy
        import sklearn

        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "mlflow",
                f"scikit-learn=={sklearn.__version__}",
                f"numpy=={numpy.__version__}",
            ],
            check=True,
        )
    return python


def save_mlflow_model(pickle_path: Path, out: Path, python: Path) -> None:
    code = (
        "import pickle, sys, mlflow.sklearn; "
        "mlflow.sklearn.save_model(pickle.load(open(sys.argv[1], 'rb')), sys.argv[2], "
        "skops_trusted_types=['sklearn.tree._tree.Tree'])"
    )
    subprocess.run([str(python), "-c", code, str(pickle_path), str(out)], check=True)


LUA = """wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Connection"] = "close"
"""


def run_wrk(
    url: str, body: str, connections: int, duration: int, threads: int, tmp: Path
) -> dict[str, float]:
    script = tmp / "post.lua"
    script.write_text(LUA % body)
    # Warm-up pass (not measured), then the measured pass.
    subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", "3s", "-s", str(script), url],
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{duration}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return parse_wrk(out)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": lat["50"],
        "p99_ms": lat["99"],
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(map(int, errors.groups()))) if errors else 0.0,
    }


def check_answer(url: str, body: str) -> list[float]:
    req = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return list(json.loads(r.read())["predictions"])


def batch_vs_inprocess(url: str, model: object, repeats: int) -> dict[str, float]:
    import numpy as np

    x, _ = train.generate(10_000, seed=2024)
    body = json.dumps({"dataframe_split": {"columns": list(FEATURES), "data": x.tolist()}}).encode()
    http_times, local_times = [], []
    served: list[float] = []
    for _ in range(repeats):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=120) as r:
            served = json.loads(r.read())["predictions"]
        http_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        local = model.predict(x)  # type: ignore[attr-defined]
        local_times.append(time.perf_counter() - t)
    assert np.array_equal(np.array(served), local), "served batch differs from model.predict"
    return {
        "http_ms": statistics.median(http_times) * 1e3,
        "inprocess_ms": statistics.median(local_times) * 1e3,
        "body_bytes": float(len(body)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--trees", type=int, default=100)
    p.add_argument("--batch-repeats", type=int, default=7)
    args = p.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found (apt-get install wrk)")
    mlflow_python = ensure_mlflow_venv()
    tmp = Path(tempfile.mkdtemp(prefix="inference-bench-"))
    print(f"work dir: {tmp}")
    model, metrics = train.train(trees=args.trees)
    model_path = train.save(model, metrics, tmp / "model")
    train.save(model, metrics, tmp / "pickle", fmt="pickle")
    save_mlflow_model(tmp / "pickle" / "model.pkl", tmp / "mlflow-model", mlflow_python)

    body = json.dumps({"dataframe_records": [SEED_EXAMPLE]}, separators=(",", ":"))
    ours_port, mlflow_port = free_port(), free_port()
    results: dict[str, object] = {
        "workers": args.workers,
        "connections": args.connections,
        "duration_s": args.duration,
        "trees": args.trees,
        "request": body,
    }
    ours_env = {
        "MODEL_PATH": str(model_path),
        "GUNICORN_BIND": f"127.0.0.1:{ours_port}",
        "WEB_CONCURRENCY": str(args.workers),
        "GUNICORN_THREADS": "1",
        "GUNICORN_LOGLEVEL": "warning",
    }
    ours_cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "inference" / "gunicorn_conf.py"),
        "inference.wsgi:app",
    ]
    with running(ours_cmd, ours_env, f"http://127.0.0.1:{ours_port}/ready", tmp / "ours.log"):
        url = f"http://127.0.0.1:{ours_port}/predict"
        ours_answer = check_answer(url, body)
        results["ours"] = run_wrk(url, body, args.connections, args.duration, args.wrk_threads, tmp)
        results["batch_10000"] = batch_vs_inprocess(url, model, args.batch_repeats)

    mlflow_cmd = [
        str(mlflow_python.parent / "mlflow"),
        "models",
        "serve",
        "-m",
        str(tmp / "mlflow-model"),
        "-h",
        "127.0.0.1",
        "-p",
        str(mlflow_port),
        "-w",
        str(args.workers),
        "--env-manager",
        "local",
    ]
    mlflow_env = {
        "PATH": f"{mlflow_python.parent}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"file:{tmp}/mlruns",
    }
    with running(mlflow_cmd, mlflow_env, f"http://127.0.0.1:{mlflow_port}/ping", tmp / "mlflow.log"):
        url = f"http://127.0.0.1:{mlflow_port}/invocations"
        mlflow_answer = check_answer(url, body)
        results["mlflow"] = run_wrk(url, body, args.connections, args.duration, args.wrk_threads, tmp)
    if ours_answer != mlflow_answer:
        print(f"WARNING: predictions differ: ours {ours_answer} mlflow {mlflow_answer}")
    results["seed_prediction"] = ours_answer[0]

    ours, ml, batch = results["ours"], results["mlflow"], results["batch_10000"]
    assert isinstance(ours, dict) and isinstance(ml, dict) and isinstance(batch, dict)
    ratios = {
        "throughput_x": ours["rps"] / ml["rps"],
        "p50_ratio": ours["p50_ms"] / ml["p50_ms"],
        "p99_ratio": ours["p99_ms"] / ml["p99_ms"],
        "batch_ratio": batch["http_ms"] / batch["inprocess_ms"],
    }
    results["ratios"] = ratios
    print(f"\nseed request prediction: {ours_answer[0]:,.2f} (mlflow: {mlflow_answer[0]:,.2f})")
    print(
        f"W={args.workers} workers each, wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration}s, "
        "Connection: close\n"
    )
    print(f"{'server':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}{'sock err':>10}")
    for name, r in (("ours", ours), ("mlflow", ml)):
        print(
            f"{name:<10}{r['rps']:>10.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['non_2xx']:>10.0f}"
            f"{r['socket_errors']:>10.0f}"
        )
    print(f"\nthroughput: {ratios['throughput_x']:.1f}x mlflow (goal >= 10x)")
    print(f"p99:        {ratios['p99_ratio']:.3f}x mlflow (goal <= 0.2x); p50 {ratios['p50_ratio']:.3f}x")
    print(
        f"10,000-row batch over HTTP: {batch['http_ms']:.1f} ms vs in-process model.predict "
        f"{batch['inprocess_ms']:.1f} ms = {ratios['batch_ratio']:.2f}x (goal <= 1.2x; median of "
        f"{args.batch_repeats}, body {batch['body_bytes'] / 1e6:.1f} MB)"
    )
    out = ROOT / "bench" / "results" / "inference.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
