"""The edge's own cost: the same client, the same app container, with and without the HAProxy edge between.

Used by ``bench/deploy_bench.py`` (``--only edge-cost`` runs just this part). Each path gets ``rounds``
rounds of ``seconds``, interleaved (the order flips every round) so a noisy neighbour on the shared
machine hits every path alike; figures are medians over rounds, and "added" / "x" are medians of the
per-round differences to the direct path (paired, same moment of the run).

Two clients, both with ``clients`` keep-alive connections sending GET /ready back to back:

- ``python``: threads with ``http.client`` (the bench's own client). Its latency includes a reconnect
  when the server closes the connection, as a real client's does. It costs CPU the app and HAProxy
  would otherwise use (shown as ``client us/req``).
- ``wrk`` (Debian's wrk, one thread): little CPU per request, so the load generator is not what is
  measured. Its latency starts when the request is written, i.e. after a reconnect: for an app that
  closes every connection (gunicorn's sync workers do) the direct path's latency leaves out the TCP
  handshake that the edge path includes (HAProxy connects to the app inside the measured time).

CPU per request of the app and edge containers comes from their cgroups (cpuacct, v1 or v2), the
client's from its rusage, ``machine`` is the whole machine's busy time per request (/proc/stat):
machine minus the three is everything else (the other helpers' tests, dockerd, docker-proxy for
the published port, softirq work not charged to a container).
"""

from __future__ import annotations

import http.client
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Path_ = tuple[str, int]
Result = dict[str, float]
CLIENTS = ("python", "wrk")


# -- CPU accounting ----------------------------------------------------------------------------------


def _cgroup_file(container_id: str) -> tuple[Path, bool] | None:
    """The container's CPU usage file and whether it is in ns (cgroup v1) or µs (v2's cpu.stat)."""
    if not re.fullmatch(r"[0-9a-f]{64}", container_id):
        return None
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    if v1.exists():
        return v1, True
    for v2 in (
        Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat"),
        Path(f"/sys/fs/cgroup/docker/{container_id}/cpu.stat"),
    ):
        if v2.exists():
            return v2, False
    return None


def container_cpu_us(container_id: str) -> float | None:
    """CPU time used so far by the container's processes, in µs (None: cgroup not found here)."""
    found = _cgroup_file(container_id)
    if found is None:
        return None
    path, ns = found
    text = path.read_text()
    if ns:
        return int(text) / 1000
    m = re.search(r"^usage_usec (\d+)", text, re.M)
    return float(m.group(1)) if m else None


def machine_busy_us() -> float:
    """Busy CPU time of the whole machine so far (all cores, /proc/stat minus idle and iowait), in µs."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user..steal, less idle and iowait
    return busy * 1e6 / os.sysconf("SC_CLK_TCK")


def host_address() -> str | None:
    """The machine's own address on its default route (no packet is sent), None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("1.1.1.1", 53))
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


# -- the two clients ---------------------------------------------------------------------------------


def python_loop(host: str, port: int, clients: int, seconds: float) -> tuple[list[float], int, float]:
    """``clients`` threads, each GET /ready back to back on its own keep-alive connection.
    Returns (latencies in s, errors, the client's CPU µs)."""
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    errors = [0]

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        mine: list[float] = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/ready")
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=5)
            if ok:
                mine.append(time.perf_counter() - t0)
            else:
                errors[0] += 1
        conn.close()
        with lock:
            lat.extend(mine)

    before = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1e6
    return lat, errors[0], cpu


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk_ms(out: str, pct: int) -> float:
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not m:
        raise RuntimeError(f"no {pct}% latency in wrk's output:\n{out}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def wrk_loop(host: str, port: int, clients: int, seconds: float) -> Result:
    """Debian's wrk, one thread, ``clients`` connections, for ``seconds`` (whole seconds)."""
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    argv = [
        exe,
        "-t1",
        f"-c{clients}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        f"http://{host}:{port}/ready",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}")
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    s = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(m.group(1)) if m else 0
    errors += sum(int(x) for x in s.groups()) if s else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {
        "requests": n,
        "errors": errors,
        "rps": rps,
        "p50_ms": _wrk_ms(out, 50),
        "p99_ms": _wrk_ms(out, 99),
        "client_cpu_us": (usage.ru_utime + usage.ru_stime) * 1e6,
    }


def _python_result(host: str, port: int, clients: int, seconds: float) -> Result:
    lat, errors, cpu = python_loop(host, port, clients, seconds)
    lat.sort()
    return {
        "requests": len(lat),
        "errors": errors,
        "rps": len(lat) / seconds,
        "p50_ms": statistics.median(lat) * 1000 if lat else 0.0,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else 0.0,
        "client_cpu_us": cpu,
    }


# -- the measurement ---------------------------------------------------------------------------------


def one_round(tool: str, target: Path_, clients: int, seconds: float, accounts: Mapping[str, str]) -> Result:
    """One path for ``seconds``: latency, throughput and CPU µs per request of client, app, edge, machine."""
    run: Callable[[str, int, int, float], Result] = wrk_loop if tool == "wrk" else _python_result
    before = {name: container_cpu_us(cid) for name, cid in accounts.items()}
    machine0 = machine_busy_us()
    r = run(target[0], target[1], clients, seconds)
    machine = machine_busy_us() - machine0
    n = max(1.0, r["requests"])
    r["client_us"] = r.pop("client_cpu_us") / n
    for name, cid in accounts.items():
        start, end = before[name], container_cpu_us(cid)
        r[f"{name}_us"] = (end - start) / n if start is not None and end is not None else float("nan")
    r["machine_us"] = machine / n
    return r


def measure(
    tool: str,
    paths: Mapping[str, Path_],
    clients: int,
    seconds: float,
    rounds: int,
    accounts: Mapping[str, str],
) -> dict[str, list[Result]]:
    """``rounds`` interleaved rounds of every path (the order flips each round)."""
    runs: dict[str, list[Result]] = {name: [] for name in paths}
    items = list(paths.items())
    for i in range(rounds):
        for name, target in items if i % 2 == 0 else items[::-1]:
            runs[name].append(one_round(tool, target, clients, seconds, accounts))
    return runs


def summarize(runs: Mapping[str, list[Result]], base: str) -> dict[str, dict[str, Any]]:
    """Medians per path, and the medians of the per-round differences/ratios to ``base``."""
    out: dict[str, dict[str, Any]] = {}
    for name, rows in runs.items():
        keys = [k for k in rows[0] if k != "errors"]
        s: dict[str, Any] = {k: round(statistics.median(r[k] for r in rows), 3) for k in keys}
        s["errors"] = int(sum(r["errors"] for r in rows))
        s["rounds"] = len(rows)
        paired = list(zip(rows, runs[base], strict=True))
        s["p50_added_ms"] = round(statistics.median(r["p50_ms"] - b["p50_ms"] for r, b in paired), 3)
        s["p99_added_ms"] = round(statistics.median(r["p99_ms"] - b["p99_ms"] for r, b in paired), 3)
        s["throughput_x"] = round(statistics.median(r["rps"] / b["rps"] for r, b in paired if b["rps"]), 3)
        s["per_round"] = [{k: round(v, 3) for k, v in r.items()} for r in rows]
        out[name] = s
    return out


def report(tool: str, summary: Mapping[str, Mapping[str, Any]], clients: int, seconds: float) -> str:
    """The table deploy_bench prints."""
    base = next(iter(summary))
    rounds = summary[base]["rounds"]
    lines = [
        f"edge cost ({tool} client): {clients} keep-alive connections, GET /ready back to back, "
        f"{rounds} interleaved rounds of {seconds:g}s per path; medians",
        f"{'path':<24} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>4}   CPU us/req: "
        f"{'client':>6} {'app':>5} {'edge':>5} {'machine':>7}",
    ]
    for name, s in summary.items():
        lines.append(
            f"{name:<24} {s['rps']:>7.0f} {s['p50_ms']:>7.3f} {s['p99_ms']:>7.2f} {s['errors']:>4}   "
            f"{'':11} {s['client_us']:>6.0f} {s['app_us']:>5.0f} {s['edge_us']:>5.0f} {s['machine_us']:>7.0f}"
        )
    for name, s in summary.items():
        if name == base:
            continue
        lines.append(
            f"{name}: {s['p50_added_ms']:+.3f} ms at p50 (goal <= 0.3), {s['p99_added_ms']:+.2f} ms at p99, "
            f"{s['throughput_x']:.2f}x the throughput (goal >= 0.9); paired per round, medians"
        )
    return "\n".join(lines)
