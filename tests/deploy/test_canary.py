"""Canary deploys on the test bed: real sshd host, HAProxy edge, registry; the tests send the traffic.

Build 1 is the stable version; build 2 is the candidate, good or faulty by its env (see
tests/deploy/canary_app.py). The canary gives the candidate 10% then 50% of the requests for 2 s each,
judged by the edge's numbers; a failed interval returns all traffic to build 1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.errors import DeployError, Fenced
from tests.deploy.canary_app import build_canary_images
from tests.deploy.helpers import REPO, DeployEnv, ExampleImages, Load, edge_servers

pytestmark = [pytest.mark.ssh, pytest.mark.docker, pytest.mark.slow]

ANALYSIS = {"max_error_rate": 0.02, "max_p99_ratio_vs_stable": 2.5, "min_requests": 10}
CANARY = {"canary": {"steps": [10, 50, 100], "interval": "2s", "analysis": ANALYSIS}}
RATE = 80


@pytest.fixture(scope="session")
def canary_images(docker_client: Any, base_image: str, registry: Any) -> ExampleImages:
    return build_canary_images(docker_client, base_image, registry.addr)


@pytest.fixture
def canary_env(deploy_env: DeployEnv, canary_images: ExampleImages) -> Iterator[DeployEnv]:
    """Build 1 (stable, 20 ms per request) deployed; the next deploy-qa is a canary."""
    env = deploy_env
    env.images, env.port, env.env, env.volume_spec = canary_images, 5000, {"DELAY_MS": "20"}, []
    env.deploy(env.new_build(1))
    env.strategy = CANARY
    yield env


def _weights(client: Any, env: DeployEnv) -> dict[str, tuple[str, int]]:
    return {n: (s.status, s.weight) for n, s in edge_servers(client, f"{env.name}-edge").items()}


def _share(row: dict[str, Any]) -> float:
    return float(row["candidate"]["requests"] / (row["candidate"]["requests"] + row["stable"]["requests"]))


def _canary(env: DeployEnv, fault: dict[str, str]) -> tuple[Any, dict[str, Any], Exception | None]:
    """Deploy build 2 with ``fault`` in its env under constant load; (step context, load, error)."""
    env.env = {"DELAY_MS": "20", **fault}
    b2 = env.new_build(2)
    load = Load(env.url, rate=RATE, path="/work")
    load.start()
    err: Exception | None = None
    with env.context(b2) as ctx:
        from orchestrator.steps.deploy import deploy

        try:
            deploy(ctx)
        except DeployError as exc:
            err = exc
    result = load.stop()
    return ctx, result, err


def test_a_good_version_reaches_100_percent_with_no_failed_request(
    canary_env: DeployEnv, docker_client: Any
) -> None:
    env = canary_env
    ctx, result, err = _canary(env, {})
    assert err is None, err
    assert result["failed"] == 0 and result["requests"] > 300, result
    strategy = ctx.record.details["strategy"]
    assert strategy["state"] == "done"
    rows = strategy["intervals"]
    assert [r["phase"] for r in rows] == ["canary 10%", "canary 50%"], rows
    assert all(r["verdict"] == "pass" for r in rows), rows
    # The weights were shares: about 10% then 50% of the requests went to the candidate.
    share = [_share(r) for r in rows]
    assert 0.03 < share[0] < 0.2 and 0.35 < share[1] < 0.65, share
    assert rows[0]["candidate"]["p99_ms"] is not None and rows[0]["stable"]["p99_ms"] >= 20
    assert _weights(docker_client, env) == {f"{env.name}-b2": ("UP", 100)}
    assert env.store.get_deployment(REPO, "qa").build_number == 2  # type: ignore[union-attr]
    log = env.log(ctx.build)
    assert "[canary] canary 10%: stable " in log and "| candidate " in log
    assert "[canary] canary 50%: pass" in log
    assert env.store.rollout_markers() == []


def test_a_version_with_10_percent_errors_is_rolled_back_at_its_first_step(
    canary_env: DeployEnv, docker_client: Any
) -> None:
    env = canary_env
    ctx, result, err = _canary(env, {"ERROR_EVERY": "10"})
    assert isinstance(err, DeployError) and "canary 10% failed the analysis: error rate" in str(err), err
    rows = ctx.record.details["strategy"]["intervals"]
    assert [(r["phase"], r["verdict"]) for r in rows] == [("canary 10%", "fail")], rows
    assert ctx.record.details["strategy"]["state"] == "rolled back"
    first = rows[0]
    assert first["candidate"]["errors"] >= 1 and first["stable"]["errors"] == 0
    # Clients saw failures only from the candidate's share: 500s, at most 10% of the first interval.
    assert result["failed"] >= 1 and set(result["failures"]) == {"HTTP 500"}, result
    interval_requests = first["candidate"]["requests"] + first["stable"]["requests"]
    assert result["failed"] <= 0.10 * interval_requests, (result, first)
    assert _weights(docker_client, env) == {f"{env.name}-b1": ("UP", 100)}
    assert env.store.get_deployment(REPO, "qa").build_number == 1  # type: ignore[union-attr]
    assert [c.name for c in docker_client.containers.list(filters={"name": f"^{env.name}-b2"})] == []


def test_a_slow_version_is_rolled_back_by_the_latency_rule(canary_env: DeployEnv, docker_client: Any) -> None:
    env = canary_env
    # 300 ms against the stable 20 ms: a load on the machine adds to both sides' p99 and so shrinks
    # their ratio; this one stays above the rule's x2.5 unless the load adds over 150 ms to both.
    ctx, result, err = _canary(env, {"DELAY_MS": "300"})
    assert isinstance(err, DeployError), err
    assert "canary 10% failed the analysis: p99 " in str(err) and "max_p99_ratio_vs_stable 2.5" in str(err)
    (row,) = ctx.record.details["strategy"]["intervals"]
    cand, stable = row["candidate"]["p99_ms"], row["stable"]["p99_ms"]
    assert cand >= 300 and cand > 2.5 * stable, row
    assert result["failed"] == 0, result
    assert _weights(docker_client, env) == {f"{env.name}-b1": ("UP", 100)}
    deadline = time.monotonic() + 10
    while docker_client.containers.list(all=True, filters={"name": f"^{env.name}-b2"}):
        assert time.monotonic() < deadline, "the candidate container was not removed"
        time.sleep(0.2)


class Running:
    """A deploy of build 2 in a thread, so the test can act while it runs."""

    def __init__(self, env: DeployEnv, fault: dict[str, str] | None = None) -> None:
        env.env = {"DELAY_MS": "20", **(fault or {})}
        self.build = env.new_build(2)
        self.env = env
        self.error: Exception | None = None
        self.ctx: Any = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        from orchestrator.steps.deploy import deploy

        with self.env.context(self.build) as ctx:
            self.ctx = ctx
            self.ready.set()
            try:
                deploy(ctx)
            except Exception as exc:
                self.error = exc

    def strategy(self) -> dict[str, Any]:
        return dict(self.ctx.record.details.get("strategy") or {})

    def wait_for(self, what: str, predicate: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.strategy()):
            assert self.thread.is_alive() or predicate(self.strategy()), (what, self.error, self.strategy())
            assert time.monotonic() < deadline, f"not {what} within {timeout}s: {self.strategy()}"
            time.sleep(0.1)

    def join(self) -> None:
        self.thread.join(90)
        assert not self.thread.is_alive()


def test_abort_mid_canary_returns_all_traffic_to_stable(canary_env: DeployEnv, docker_client: Any) -> None:
    env = canary_env
    env.strategy = {"canary": {**CANARY["canary"], "interval": "3s"}}
    load = Load(env.url, rate=RATE, path="/work")
    load.start()
    run = Running(env)
    run.wait_for("at 50%", lambda st: st.get("percent") == 50)
    assert _weights(docker_client, env) == {f"{env.name}-b1": ("UP", 50), f"{env.name}-b2": ("UP", 50)}
    env.store.push_deploy_command(run.build.id, "abort", "alice")
    run.join()
    result = load.stop()
    assert isinstance(run.error, DeployError) and "aborted by hand (alice)" in str(run.error), run.error
    assert run.strategy()["state"] == "aborted"
    assert _weights(docker_client, env) == {f"{env.name}-b1": ("UP", 100)}
    assert result["failed"] == 0, result
    assert env.store.get_deployment(REPO, "qa").build_number == 1  # type: ignore[union-attr]
    assert "manual command: abort (by alice)" in env.log(run.build)


def test_pause_holds_the_canary_and_promote_now_switches(canary_env: DeployEnv, docker_client: Any) -> None:
    env = canary_env
    load = Load(env.url, rate=RATE, path="/work")
    load.start()
    run = Running(env)
    run.wait_for("at 10%", lambda st: st.get("percent") == 10)
    env.store.push_deploy_command(run.build.id, "pause", "bob")
    run.wait_for("paused", lambda st: st.get("state") == "paused")
    held = len(run.strategy()["intervals"])
    time.sleep(3.0)  # longer than the 2 s interval: a paused canary judges nothing and moves nowhere
    assert len(run.strategy()["intervals"]) == held and run.strategy()["percent"] == 10
    assert _weights(docker_client, env)[f"{env.name}-b2"] == ("UP", 10)
    env.store.push_deploy_command(run.build.id, "resume", "bob")
    env.store.push_deploy_command(run.build.id, "promote", "bob")
    run.join()
    result = load.stop()
    assert run.error is None, run.error
    st = run.strategy()
    assert st["state"] == "done" and "canary 50%" not in [r["phase"] for r in st["intervals"]], st
    assert _weights(docker_client, env) == {f"{env.name}-b2": ("UP", 100)}
    assert result["failed"] == 0, result


WATCH = {
    "duration": "6s",
    "interval": "2s",
    "analysis": {"max_error_rate_vs_stable": 0.02, "min_requests": 10},
}


def test_a_regression_during_the_watch_rolls_back(canary_env: DeployEnv, docker_client: Any) -> None:
    env = canary_env
    env.strategy = {"watch": WATCH}
    load = Load(env.url, rate=RATE, path="/work")
    load.start()
    run = Running(env)
    run.wait_for("watching", lambda st: st.get("state") == "watching")
    # The switch happened; the old container is kept (drained) while the watch runs.
    assert _weights(docker_client, env)[f"{env.name}-b1"][0].startswith("DRAIN")
    assert env.store.get_deployment(REPO, "qa").build_number == 2  # type: ignore[union-attr]
    docker_client.containers.get(f"{env.name}-b2").exec_run(["touch", "/tmp/fail"])
    run.join()
    result = load.stop()
    assert isinstance(run.error, DeployError) and "found a regression: error rate" in str(run.error), (
        run.error
    )
    st = run.strategy()
    assert st["state"] == "rolled back" and run.ctx.record.details["outcome"] == "rolled back"
    assert st["baseline"]["requests"] > 50 and st["baseline"]["errors"] == 0
    failed = [r for r in st["intervals"] if r["verdict"] == "fail"]
    assert failed and failed[0]["candidate"]["errors"] >= 2, st["intervals"]
    assert _weights(docker_client, env) == {f"{env.name}-b1": ("UP", 100)}
    dep = env.store.get_deployment(REPO, "qa")
    assert dep is not None and dep.build_number == 1
    assert [d.build_number for d in env.store.deployment_history(REPO, "qa", 5)] == [1]
    assert set(result["failures"]) <= {"HTTP 500"}, result
    assert [
        c.name for c in docker_client.containers.list(all=True, filters={"name": f"^{env.name}-b2"})
    ] == []


def test_a_quiet_watch_keeps_the_new_version(canary_env: DeployEnv, docker_client: Any) -> None:
    env = canary_env
    env.strategy = {"watch": {**WATCH, "duration": "4s"}}
    load = Load(env.url, rate=RATE, path="/work")
    load.start()
    run = Running(env)
    run.join()
    result = load.stop()
    assert run.error is None, run.error
    assert [r["verdict"] for r in run.strategy()["intervals"]] == ["", "pass", "pass"]  # baseline, 2 watches
    assert _weights(docker_client, env) == {f"{env.name}-b2": ("UP", 100)}
    assert result["failed"] == 0, result


def test_a_lost_workers_canary_is_returned_to_stable_by_the_janitor(
    canary_env: DeployEnv, docker_client: Any
) -> None:
    from orchestrator.build.worker import janitor_once

    env = canary_env
    env.strategy = {"canary": {**CANARY["canary"], "interval": "60s"}}
    run = Running(env)
    run.wait_for("at 10%", lambda st: st.get("percent") == 10)
    assert _weights(docker_client, env)[f"{env.name}-b1"] == ("UP", 90)
    # The worker stops renewing its lease (as if its machine died); the janitor reaps the build.
    env.store.start_lease(run.build.id, "", -5)
    assert janitor_once(env.store, None, settings=env.settings) == [run.build.id]
    assert _weights(docker_client, env) == {f"{env.name}-b1": ("UP", 100), f"{env.name}-b2": ("UP", 0)}
    saved = docker_client.containers.get(f"{env.name}-edge").exec_run(["cat", "/state/haproxy.cfg"]).output
    lines = [x.strip() for x in saved.decode().splitlines() if x.strip().startswith("server ")]
    assert any(x.startswith(f"server {env.name}-b1 ") and x.endswith("weight 100") for x in lines), lines
    assert any(x.startswith(f"server {env.name}-b2 ") and x.endswith("weight 0") for x in lines), lines
    assert env.store.rollout_markers() == []
    assert "canary returned to stable: " in env.log(run.build)
    # The stalled worker wakes (here: is told to abort): it is fenced and changes nothing more.
    env.store.push_deploy_command(run.build.id, "abort", "test")
    run.join()
    assert isinstance(run.error, Fenced), run.error
    assert _weights(docker_client, env) == {f"{env.name}-b1": ("UP", 100), f"{env.name}-b2": ("UP", 0)}


class PostLoad(threading.Thread):
    """POST /predict at a constant rate; checks every answer is the stable version's (sum of the row)."""

    def __init__(self, url: str, rate: float = 40.0) -> None:
        super().__init__(daemon=True)
        self.url, self.rate = url, rate
        self.stop_event = threading.Event()
        self.sent = 0
        self.failed: list[str] = []
        self.not_stable: list[str] = []

    def run(self) -> None:
        import http.client
        import json

        host, _, port = self.url.removeprefix("http://").partition(":")
        i = 0
        while not self.stop_event.wait(1.0 / self.rate):
            i += 1
            row = [i % 10, 1]
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
                conn.request(
                    "POST", "/predict", json.dumps({"rows": [row]}), {"Content-Type": "application/json"}
                )
                r = conn.getresponse()
                body = r.read()
                conn.close()
            except OSError as exc:
                self.failed.append(str(exc))
                continue
            self.sent += 1
            if r.status != 200:
                self.failed.append(f"HTTP {r.status}")
            elif json.loads(body) != {"predictions": [float(sum(row))]}:
                self.not_stable.append(body.decode())

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


SHADOW = {"percent": 50, "duration": "20s", "analysis": {"max_share_changed": 0.05, "min_requests": 30}}


def test_shadow_stops_a_candidate_that_differs_on_30_percent_of_rows(
    canary_env: DeployEnv, docker_client: Any
) -> None:
    env = canary_env
    env.strategy = {"shadow": SHADOW}
    load = PostLoad(env.url)
    load.start()
    run = Running(env, {"CHANGED_DIGITS": "3", "CHANGE_BY": "5"})
    run.join()
    load.stop()
    assert isinstance(run.error, DeployError), run.error
    assert "shadow stopped the candidate: " in str(run.error) and "of rows changed" in str(run.error), (
        run.error
    )
    assert "largest differences: " in str(run.error)
    st = run.strategy()
    assert st["state"] == "rolled back"
    diff = st["diff"]
    assert 0.15 < diff["share_changed"] < 0.45 and diff["rows"] >= 30, diff
    assert diff["max_abs_diff"] == 5.0 and 1.0 < diff["mean_abs_diff"] < 2.5, diff
    assert all(x["candidate"] - x["stable"] == 5.0 for x in diff["largest"]), diff
    # No client got a candidate answer: every one of them was the stable version's.
    assert load.sent > 100 and load.failed == [] and load.not_stable == [], (
        load.sent,
        load.failed[:3],
        load.not_stable[:3],
    )
    assert _weights(docker_client, env) == {f"{env.name}-b1": ("UP", 100)}
    assert env.store.get_deployment(REPO, "qa").build_number == 1  # type: ignore[union-attr]


def test_shadow_of_an_equal_candidate_switches(canary_env: DeployEnv, docker_client: Any) -> None:
    env = canary_env
    env.strategy = {
        "shadow": {**SHADOW, "duration": "4s", "analysis": {"max_share_changed": 0.0, "min_requests": 10}}
    }
    load = PostLoad(env.url)
    load.start()
    run = Running(env)
    run.join()
    load.stop()
    assert run.error is None, run.error
    assert run.strategy()["diff"]["changed"] == 0 and run.strategy()["diff"]["rows"] >= 10
    assert load.failed == [] and load.not_stable == []
    assert _weights(docker_client, env) == {f"{env.name}-b2": ("UP", 100)}


def test_the_latency_rule_can_read_the_services_own_histogram(
    canary_env: DeployEnv, docker_client: Any
) -> None:
    env = canary_env
    prom = {"path": "/metrics", "histogram": "app_request_seconds"}
    env.strategy = {"canary": {**CANARY["canary"], "analysis": {**ANALYSIS, "prometheus": prom}}}
    # The candidate answers as fast as the stable version (the edge's times would pass it), but its
    # own histogram says 150 ms per request: only a rule that reads the histogram rolls it back.
    ctx, result, err = _canary(env, {"REPORT_MS": "150"})
    assert isinstance(err, DeployError) and "max_p99_ratio_vs_stable 2.5" in str(err), err
    (row,) = ctx.record.details["strategy"]["intervals"]
    # Interpolated within the app's buckets, as histogram_quantile does: every observation of 150 ms
    # lands in 0.1..0.25 s, so the p99 is 0.1 + 0.99 x 0.15 s. The stable one measured ~20 ms.
    assert row["candidate"]["p99_ms"] == pytest.approx(248.5, abs=0.5), row
    assert row["stable"]["p99_ms"] < 100, row
    assert result["failed"] == 0, result
    assert _weights(docker_client, env) == {f"{env.name}-b1": ("UP", 100)}
