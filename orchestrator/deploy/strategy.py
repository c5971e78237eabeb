"""How the traffic moves to the new containers once every host's edge health-gated them: the
strategies of a deploy step's ``strategy:`` (orchestrator/pipeline/strategy.py).

- ``Switch`` (the default, today's behaviour): each host shifts as soon as its new container is healthy;
- ``Progressive``: every host's new container waits at weight 0; then (``canary``) it gets ``steps``
  percent of the requests in turn (edge weights: candidate ``p``, each stable server ``100 - p``), each
  step judged over ``interval`` by its analysis (orchestrator/deploy/analysis.py); a failed interval,
  an abort or any error returns all traffic to the stable servers before the step fails. The last
  step (100) is the switch. With ``watch``, the old containers are kept (drained, running) after the
  switch for ``watch.duration`` while the new ones are judged against the stable numbers measured
  before the switch; a regression gives the old ones their traffic back and restores the deployment
  record.

Hooks: ``rollout`` calls ``HostDeploy.switch(shift=strategy.per_host)`` on every host, then
``strategy.run(hosts)``; ``rollout.run`` calls ``strategy.watch(states, previous, recorded)`` right
after recording the deployment. Manual commands (pause, resume, abort, promote) arrive through
``Store.push_deploy_command`` (API, CLI, build page) and are read between polls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.deploy import analysis as an
from orchestrator.deploy import commands as remote
from orchestrator.deploy import haproxy
from orchestrator.deploy.lost import stable_commands
from orchestrator.errors import DeployError, InfrastructureError
from orchestrator.pipeline.strategy import AnalysisSpec, StrategySpec

if TYPE_CHECKING:
    from orchestrator.deploy.fence import Fence
    from orchestrator.deploy.plan import Plan
    from orchestrator.deploy.swap import HostDeploy, HostState
    from orchestrator.models import Deployment
    from orchestrator.steps.base import StepContext

POLL = 0.25  # seconds between checks for a cancel or a manual command while an interval runs
SHADOW_POLL = 2.0  # seconds between reads of the edges' shadow answers (each read judges all so far)


class Promoted(Exception):
    """promote-now: skip what is left of the canary (or the watch) and keep the new version."""


class Switch:
    """Today's behaviour: each host shifts right after its health gate; nothing to watch."""

    per_host = True

    def run(self, hosts: Sequence[HostDeploy]) -> None:
        return None

    def watch(
        self, states: Sequence[HostState], fence: Fence, previous: Deployment | None, recorded: Deployment
    ) -> None:
        return None


def for_step(ctx: StepContext, plan: Plan) -> Switch | Progressive:
    """The strategy of this deploy: a rollback always switches (back to what was healthy, fast)."""
    spec = getattr(ctx.step.spec, "strategy", None)
    if plan.action == "rollback" or not isinstance(spec, StrategySpec):
        return Switch()
    if spec.kind == "switch" and spec.watch is None:
        return Switch()
    return Progressive(ctx, plan, spec)


@dataclass
class Snapshot:
    """Every host's edge at one moment: its servers' counters and the last request it logged."""

    stats: list[dict[str, haproxy.ServerStat]]
    seqs: list[int]
    histograms: list[dict[str, dict[float, float]]]  # per host, per server (with ``prometheus:`` only)


class Progressive:
    """Canary steps and/or a watch, over every host of the environment at once."""

    per_host = False

    def __init__(self, ctx: StepContext, plan: Plan, spec: StrategySpec) -> None:
        self.ctx = ctx
        self.plan = plan
        self.spec = spec
        self.baseline: an.Window | None = None  # the stable side before the switch (for a watch)
        self.paused = False
        self.last: Snapshot | None = None  # the end of the previous interval (None: read anew)
        self.rows: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {"kind": spec.kind, "state": "running", "intervals": self.rows}
        if spec.watch is not None:
            self.info["watch"] = {"duration": spec.watch.duration, "interval": spec.watch.interval}
        if spec.canary is not None:
            self.info["steps"] = list(spec.canary.steps)
        analysis = spec.canary.analysis if spec.canary else spec.watch.analysis if spec.watch else None
        self.prometheus = analysis.prometheus if analysis is not None else None
        self.ips: dict[tuple[str, str], str] = {}
        ctx.record.details["strategy"] = self.info

    # -- phase 1: canary (or the baseline of a watch), then the switch --------------------------------

    def run(self, hosts: Sequence[HostDeploy]) -> None:
        if not any(h.state.previous for h in hosts):
            self.log("first deploy here: no stable version to compare with, switching")
            for h in hosts:
                h.shift(h.state.container)
            self.info["state"] = "switched (first deploy)"
            return
        self.mark(hosts)
        try:
            try:
                if self.spec.shadow is not None:
                    self.shadow(hosts)
                elif self.spec.canary is not None:
                    self.canary(hosts)
                elif self.spec.watch is not None:
                    self.log(
                        "measuring the stable servers' baseline for the watch (the new ones at weight 0)"
                    )
                    self.baseline = self.interval(hosts, "baseline", None, self.spec.watch.interval)[0]
            except Promoted:
                self.log("promoted by hand: the rest of the canary is skipped")
                self.info["state"] = "promoted"
            for h in hosts:
                h.shift(h.state.container)
        except BaseException as exc:
            self.to_stable(hosts, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.unmark()
        self.info["state"] = "switched" if self.spec.watch else "done"
        self.save()

    def canary(self, hosts: Sequence[HostDeploy]) -> None:
        c = self.spec.canary
        assert c is not None
        for pct in c.steps[:-1]:
            self.weights(hosts, pct)
            self.info["percent"] = pct
            stable = self.judged(hosts, f"canary {pct}%", c.analysis, c.interval)
            self.baseline = stable
        self.info["percent"] = 100

    def shadow(self, hosts: Sequence[HostDeploy]) -> None:
        """Mirror ``percent`` of the live requests to stable and candidate (their answers are never sent
        to a client), compare the predictions; raise with the diff report if the rules fail."""
        sh = self.spec.shadow
        assert sh is not None
        starts = []
        for h in hosts:
            stable = f"{h.ip_of(h.state.previous[0])}:{self.plan.port}"
            cand = f"{h.ip_of(h.state.container)}:{self.plan.port}"
            starts.append((h, haproxy.shadow_start(sh.percent, sh.path, stable, cand)))
        pairs: list[an.ShadowPair] = []
        try:
            for h, cmd in starts:
                h.edge.api([cmd])
            self.log(
                f"shadow: {sh.percent}% of POST {sh.path} copied to the candidate for {sh.duration:g}s "
                "(its answers are compared, never served)"
            )
            self.shadow_loop(hosts, pairs)
        finally:
            for h in hosts:
                with contextlib.suppress(DeployError, InfrastructureError):
                    h.edge.api([haproxy.shadow_stop()])

    def shadow_loop(self, hosts: Sequence[HostDeploy], pairs: list[an.ShadowPair]) -> None:
        sh = self.spec.shadow
        assert sh is not None
        left, n = sh.duration, 0
        while True:
            step = min(SHADOW_POLL, left)
            self.wait(step)
            left, n = left - step, n + 1
            for h in hosts:
                pairs += an.parse_shadow_dump(h.edge.query(haproxy.shadow_dump()))[1]
            report = an.shadow_report(pairs, sh.prediction, sh.analysis.tolerance)
            verdict = an.judge_shadow(sh.analysis, report)
            self.shadow_row(n, step, report, verdict)
            if verdict.status == an.FAIL:
                raise DeployError(
                    f"shadow stopped the candidate: {'; '.join(verdict.reasons)}{_largest(report)}"
                )
            if left <= 0:
                if verdict.status == an.PASS:
                    return
                raise DeployError(f"shadow: too little traffic to judge: {'; '.join(verdict.reasons)}")

    def shadow_row(self, n: int, seconds: float, report: dict[str, Any], verdict: an.Verdict) -> None:
        compared = report["requests"] - report["failed"]
        self.info["diff"] = report
        self.rows.append(
            {
                "phase": f"shadow {n}",
                "at": round(time.time(), 1),
                "seconds": round(seconds, 2),
                "stable": {"requests": report["requests"], "errors": report["failed"]},
                "candidate": {"requests": compared, "errors": report["changed"]},
                "verdict": "",
                "reasons": [],
            }
        )
        self.log(
            f"shadow {n}: {report['requests']} requests mirrored, {report['rows']} rows compared, "
            f"{report['changed']} changed ({report['share_changed'] * 100:.2f}%), mean |diff| "
            f"{report['mean_abs_diff']:g}, max |diff| {report['max_abs_diff']:g}"
        )
        self.row_verdict(verdict)

    def weights(self, hosts: Sequence[HostDeploy], pct: int) -> None:
        """The candidate gets ``pct`` of the requests: weight pct, each stable server 100 - pct. The
        next interval starts now (its numbers are read right after the change)."""
        for h in hosts:
            h.edge.api(
                [haproxy.set_weight(h.state.container, pct)]
                + [haproxy.set_weight(s, haproxy.FULL_WEIGHT - pct) for s in h.state.previous]
            )
        self.info.setdefault("started_at", round(time.time(), 3))  # the candidate's first traffic
        self.last = self.snapshot(hosts)[0]
        for h in hosts:
            h.edge.save()
        self.log(f"canary: {pct}% of the requests to the new version on {len(hosts)} host(s)")

    def judged(
        self, hosts: Sequence[HostDeploy], phase: str, spec: AnalysisSpec, seconds: float
    ) -> an.Window:
        """Intervals until one passes (or too little traffic is accepted); raise on a failed one.
        Returns the stable side of the interval that passed."""
        waits = 0
        while True:
            stable, cand = self.interval(hosts, phase, spec, seconds)
            verdict = an.judge(spec, stable, cand)
            self.row_verdict(verdict)
            if verdict.status == an.PASS:
                return stable
            if verdict.status == an.INSUFFICIENT:
                if spec.on_insufficient == "proceed":
                    self.log(f"{phase}: too little traffic, proceeding (on_insufficient: proceed)")
                    return stable
                if spec.on_insufficient == "wait" and waits < spec.max_wait:
                    waits += 1
                    self.log(f"{phase}: too little traffic, waiting ({waits}/{spec.max_wait})")
                    continue
            raise DeployError(f"{phase} failed the analysis: {'; '.join(verdict.reasons)}")

    # -- one interval ------------------------------------------------------------------------------------

    def snapshot(self, hosts: Sequence[HostDeploy]) -> tuple[Snapshot, list[list[an.Timing]]]:
        """Every host's counters and timing ring, one round trip per host."""
        stats, seqs, timings, hists = [], [], [], []
        for h in hosts:
            st, events = h.edge.stats_and_timings()
            t = an.parse_timings(events)  # an edge of an older image has no ring: no p99 numbers
            stats.append(st)
            timings.append(t)
            seqs.append(an.last_seq(t))
            hists.append(self.histograms(h) if self.prometheus is not None else {})
        return Snapshot(stats, seqs, hists), timings

    def histograms(self, h: HostDeploy) -> dict[str, dict[float, float]]:
        """Every stable and candidate server's latency histogram, fetched from inside the edge."""
        prom = self.prometheus
        assert prom is not None
        out = {}
        for server in [*h.state.previous, h.state.container]:
            key = (h.label, server)
            if key not in self.ips:
                self.ips[key] = h.ip_of(server)
            res = h.sh(
                remote.edge_fetch(self.plan.names["edge"], f"{self.ips[key]}:{self.plan.port}"),
                stdin=remote.http_get(prom.path),
                check=False,
                capture=True,
                quiet=True,
                cancellable=False,
                timeout=15,
            )
            out[server] = an.parse_histogram(res.stdout, prom.histogram) if res.exit_code == 0 else {}
        return out

    def histogram_p99s(
        self, hosts: Sequence[HostDeploy], before: Snapshot, after: Snapshot
    ) -> tuple[float | None, float | None]:
        """(stable p99, candidate p99) in ms from the histograms' growth over the interval."""
        stable: list[dict[float, float]] = []
        cand: list[dict[float, float]] = []
        for i, h in enumerate(hosts):
            for server, buckets in after.histograms[i].items():
                delta = an.histogram_delta(before.histograms[i].get(server, {}), buckets)
                (cand if server == h.state.container else stable).append(delta)
        return an.histogram_p99(an.add_buckets(stable)), an.histogram_p99(an.add_buckets(cand))

    def interval(
        self, hosts: Sequence[HostDeploy], phase: str, spec: AnalysisSpec | None, seconds: float
    ) -> tuple[an.Window, an.Window]:
        """Wait ``seconds`` (minding cancel and manual commands); the stable and candidate numbers.
        Intervals follow each other: one interval's end is the next one's start (one read, not two)."""
        before = self.last if self.last is not None else self.snapshot(hosts)[0]
        self.wait(seconds)
        after, timings = self.snapshot(hosts)
        self.last = after
        s_req = s_err = c_req = c_err = 0
        s_times: list[int] = []
        c_times: list[int] = []
        for i, h in enumerate(hosts):
            new = [h.state.container]
            r, e = an.counter_delta(before.stats[i], after.stats[i], h.state.previous)
            s_req, s_err = s_req + r, s_err + e
            r, e = an.counter_delta(before.stats[i], after.stats[i], new)
            c_req, c_err = c_req + r, c_err + e
            fresh = an.since(timings[i], before.seqs[i])
            s_times += an.times_of(fresh, h.state.previous)
            c_times += an.times_of(fresh, new)
        stable, cand = an.window(s_req, s_err, s_times), an.window(c_req, c_err, c_times)
        if self.prometheus is not None:
            sp, cp = self.histogram_p99s(hosts, before, after)
            stable, cand = dataclasses.replace(stable, p99_ms=sp), dataclasses.replace(cand, p99_ms=cp)
        self.rows.append(
            {
                "phase": phase,
                "at": round(time.time(), 1),
                "seconds": round(seconds, 2),
                "stable": stable.as_dict(),
                "candidate": cand.as_dict(),
                "verdict": "" if spec is None else "…",
                "reasons": [],
            }
        )
        self.log(f"{phase}: stable {_fmt(stable)} | candidate {_fmt(cand)}")
        return stable, cand

    def row_verdict(self, verdict: an.Verdict) -> None:
        row = self.rows[-1]
        row["verdict"], row["reasons"] = verdict.status, list(verdict.reasons)
        self.log(
            f"{row['phase']}: {verdict.status}"
            + (f": {'; '.join(verdict.reasons)}" if verdict.reasons else ""),
            "stdout" if verdict.status == an.PASS else "stderr",
        )
        with contextlib.suppress(Exception):
            self.ctx.store.set_analysis(
                self.plan.repo, self.plan.env_name, {**row, "build": self.plan.number}
            )
        self.save()

    def wait(self, seconds: float) -> None:
        """``seconds`` of traffic; a pause stops the clock until resume. Raises on cancel and abort,
        ``Promoted`` on promote."""
        left = seconds
        while left > 0 or self.paused:
            t0 = time.monotonic()
            if self.ctx.cancel.wait(POLL):
                self.ctx.stopped()
            self.command()
            if not self.paused:
                left -= time.monotonic() - t0

    def command(self) -> None:
        got = self.ctx.store.pop_deploy_command(self.ctx.build.id)
        if got is None:
            return
        cmd, by = got
        self.log(f"manual command: {cmd}" + (f" (by {by})" if by else ""))
        if cmd == "pause" and not self.paused:
            self.paused, self.info["state"] = True, "paused"
        elif cmd == "resume" and self.paused:
            self.paused, self.info["state"] = False, "running"
        elif cmd == "abort":
            self.info["state"] = "aborted"
            raise DeployError(
                f"aborted by hand{f' ({by})' if by else ''}: all traffic goes back to the stable version"
            )
        elif cmd == "promote":
            self.paused = False
            raise Promoted()
        self.save()

    # -- returning to stable ---------------------------------------------------------------------------

    def to_stable(self, hosts: Sequence[HostDeploy], why: str) -> None:
        """Every host: the stable servers at full weight and ready, the candidate at weight 0 (all
        hosts first, then their configs saved). Best effort per host (the rollout's undo then
        removes the candidate)."""
        moved = []
        for h in hosts:
            try:
                h.edge.api(stable_commands(h.state.previous, h.state.container if h.state.added else ""))
                h.state.switched = False
                moved.append(h)
            except (DeployError, InfrastructureError) as exc:
                h.log(f"could not return the edge to the stable servers: {exc}", "stderr")
        self.info["returned_at"] = round(time.time(), 3)  # every edge sends the candidate nothing
        for h in moved:
            with contextlib.suppress(DeployError, InfrastructureError):
                h.edge.save()
        if self.info["state"] not in ("aborted",):
            self.info["state"] = "rolled back"
        self.info["reason"] = why[:500]
        self.log(f"rolled back: all traffic to the stable version ({why[:300]})", "stderr")
        self.save()

    # -- phase 2: the watch after the switch ---------------------------------------------------------

    def watch(
        self, states: Sequence[HostState], fence: Fence, previous: Deployment | None, recorded: Deployment
    ) -> None:
        w = self.spec.watch
        if w is None:
            return
        from orchestrator.deploy.swap import HostDeploy

        hosts = [HostDeploy(self.ctx, self.plan, s, fence) for s in states]
        self.last = None  # the watch's intervals start after the switch
        base = self.baseline or an.Window()
        self.info["state"], self.info["baseline"] = "watching", base.as_dict()
        self.log(
            f"watching the new version for {w.duration:g}s against the baseline before the switch "
            f"({_fmt(base)}); the old containers are kept until then"
        )
        try:
            for n in range(max(1, math.floor(w.duration / w.interval))):
                self.watch_interval(hosts, n, base)
        except Promoted:
            self.log("promoted by hand: the watch ends, the new version stays")
        except BaseException as exc:
            self.watch_rollback(hosts, previous, recorded, f"{exc}")
            raise
        self.info["state"] = "done"
        self.save()

    def watch_interval(self, hosts: Sequence[HostDeploy], n: int, base: an.Window) -> None:
        w = self.spec.watch
        assert w is not None
        _, cand = self.interval(hosts, f"watch {n + 1}", w.analysis, w.interval)
        verdict = an.judge(w.analysis, base, cand, baseline="baseline")
        self.row_verdict(verdict)
        if verdict.status == an.FAIL or (
            verdict.status == an.INSUFFICIENT and w.analysis.on_insufficient == "fail"
        ):
            raise DeployError(f"watch {n + 1} found a regression: {'; '.join(verdict.reasons)}")

    def watch_rollback(
        self, hosts: Sequence[HostDeploy], previous: Deployment | None, recorded: Deployment, why: str
    ) -> None:
        """The old servers (drained, still running) serve again; the new ones drain and leave."""
        self.log(f"watch: rolling back to build #{previous.build_number if previous else '?'}", "stderr")
        for h in hosts:
            try:
                h.edge.api(
                    [haproxy.set_state(s, "ready") for s in h.state.previous]
                    + [haproxy.set_weight(s, haproxy.FULL_WEIGHT) for s in h.state.previous]
                    + [haproxy.set_state(h.state.container, "drain")]
                )
                h.edge.save()
                h.edge.wait_idle([h.state.container], time.monotonic() + self.plan.env.drain_seconds)
                h.edge.delete(h.state.container)
                h.edge.save()
                h.sh(remote.rm(h.state.container), check=False, cancellable=False)
                h.state.switched = h.state.added = False
            except (DeployError, InfrastructureError) as exc:
                h.log(f"could not roll back this host: {exc}", "stderr")
        with contextlib.suppress(Exception):
            self.ctx.store.restore_deployment(previous, recorded)
        self.info["state"], self.info["reason"] = "rolled back", why[:500]
        self.ctx.record.details["outcome"] = "rolled back"
        self.save()

    # -- bookkeeping -------------------------------------------------------------------------------------

    def mark(self, hosts: Sequence[HostDeploy]) -> None:
        """Tell the janitor what to reset if this worker is lost half-way (orchestrator/build/worker.py)."""
        c = self.plan.edge_config()
        marker = {
            "repo": self.plan.repo,
            "environment": self.plan.env_name,
            "build_id": self.ctx.build.id,
            "edge": self.plan.names["edge"],
            "app": c.app,
            "check": dataclasses.asdict(c.check),
            "hosts": {
                str(h.state.target): {"stable": list(h.state.previous), "candidate": h.state.container}
                for h in hosts
            },
        }
        with contextlib.suppress(Exception):
            self.ctx.store.set_rollout_marker(self.plan.repo, self.plan.env_name, marker)

    def unmark(self) -> None:
        with contextlib.suppress(Exception):
            self.ctx.store.clear_rollout_marker(self.plan.repo, self.plan.env_name)

    def save(self) -> None:
        with contextlib.suppress(Exception):
            self.ctx.save()

    def log(self, text: str, stream: str = "stdout") -> None:
        self.ctx.log.line(f"[{self.spec.kind}] {text}", stream)


def _largest(report: dict[str, Any]) -> str:
    shown = [f"{x['request']} -> stable {x['stable']}, candidate {x['candidate']}" for x in report["largest"]]
    return ("; largest differences: " + " | ".join(shown)) if shown else ""


def _fmt(w: an.Window) -> str:
    p99 = f"{w.p99_ms:g} ms" if w.p99_ms is not None else "n/a"
    return f"{w.requests} req, {w.errors} 5xx ({w.error_rate * 100:.2f}%), p99 {p99}"
