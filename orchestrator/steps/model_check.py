"""The ``model_check`` step: the model gate.

``mode: http`` (the default) treats the service as a black box: after the candidate was deployed
(e.g. to QA) the gate sends the golden rows to it through its published port, the same rows to the
environment of ``compare_to`` (Prod), and scores both answers against the labels.
``mode: in_image`` copies ``orchestrator/gate/evaluate.py``, the golden rows and the model files into
a container of the built image (no network, nothing mounted) and runs it there.

Both modes end the same way: metrics from scikit-learn (``gate.metrics``), the prediction diff
(``gate.diff``), and ``gate.rules.judge``, which fails closed. The comparison goes into the log, onto
the build (``build.gate[step]``), the step's details and the ``mlship_model_gates_total`` counter; a
broken rule fails the step, so the deploy steps after it do not run.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.build import model_registry
from orchestrator.build.artifacts import ModelArtifact, find_model, inside
from orchestrator.errors import StepFailed
from orchestrator.gate import metrics
from orchestrator.gate.client import Client, ServiceError
from orchestrator.gate.diff import diff_lines, prediction_diff
from orchestrator.gate.golden import GoldenError, GoldenSet, read_golden
from orchestrator.gate.protocol import Shape
from orchestrator.gate.rules import Bound, GateResult, GateRules, judge
from orchestrator.gate.spec import ModelCheckSpec, candidate_environment
from orchestrator.steps.base import StepContext
from orchestrator.steps.docker import _wait_exit, step_container

EVALUATOR = Path(__file__).resolve().parent.parent / "gate" / "evaluate.py"
GATE_DIR = "/tmp/mlship-gate"  # noqa: S108  (inside the throw-away evaluation container)
STDERR_TAIL = 2000
MEASURED_ONLY = ("predictions", "probabilities", "classes")  # kept for the diff, not stored on the build


def rules(spec: ModelCheckSpec) -> GateRules:
    """The pipeline's rules as ``gate.GateRules``."""
    lat = spec.latency
    limits = {k: getattr(lat, k) for k in ("p50_ms", "p99_ms", "single_ms", "batch_ms")} if lat else {}
    return GateRules(
        thresholds={k: Bound(min=b.min, max=b.max) for k, b in spec.thresholds.items()},
        no_worse_than_deployed=dict(spec.no_worse_than_deployed),
        latency_ms={k: v for k, v in limits.items() if v is not None},
        baseline=spec.baseline,
        compare_to=spec.compare_to,
        reached="loads" if spec.mode == "in_image" else "answers",
    )


def score(spec: ModelCheckSpec, golden: GoldenSet, entry: dict[str, Any]) -> dict[str, Any]:
    """Add the metrics of ``entry['predictions']`` against the labels (an error makes it not ok)."""
    preds = entry["predictions"]
    try:
        if spec.task == "regression":
            bad = next((i for i, p in enumerate(preds) if not isinstance(p, int | float)), None)
            if bad is not None:
                why = f"the prediction for {golden.where(bad)} is not a number: {preds[bad]!r}"
                return {**entry, "ok": False, "error": why}
            entry["finite"] = metrics.finite(preds)
            entry["metrics"] = metrics.regression(golden.labels, preds) if entry["finite"] else {}
        else:
            given = spec.response.classes or entry.get("classes")
            entry["metrics"] = metrics.classification(golden.labels, preds, entry.get("probabilities"), given)
    except (metrics.MetricError, ValueError, TypeError) as exc:
        return {**entry, "ok": False, "error": f"cannot score the answers: {exc}"}
    return entry


def failure_message(result: GateResult) -> str:
    """``model gate failed: <checks>``, with the reason when the model or the baseline was not measured."""
    failed = [c for c in result.checks if not c.passed]
    msg = "model gate failed: " + ", ".join(c.name for c in failed)
    why = [c.detail for c in failed if c.name in ("loads", "answers") or c.name.startswith("baseline in ")]
    return msg + (f" ({why[0]})" if why else "")


# -- http mode ---------------------------------------------------------------------------------------


def environment_url(ctx: StepContext, env: str) -> str:
    """``http://<first host>:<published port>`` of ``env`` (the deploy publishes it there)."""
    e = ctx.pipeline.environments[env]
    host = e.hosts[0].host
    return f"http://{f'[{host}]' if ':' in host else host}:{int(e.container.publish or 0)}"


def measure(client: Client, spec: ModelCheckSpec, golden: GoldenSet) -> dict[str, Any]:
    """Query one environment with every golden row and score its answers."""
    try:
        answers = client.query(golden)
    except ServiceError as exc:
        return {"ok": False, "error": str(exc), "url": client.url, "deployed": True}
    entry = {
        "ok": True,
        "url": client.url,
        "rows": len(answers.predictions),
        "how": f"{len(answers.predictions)} rows, {len(answers.latencies_ms)} request(s) to {client.url}",
        "predictions": answers.predictions,
        "probabilities": answers.probabilities,
        "latency_ms": metrics.latency(answers.latencies_ms),
    }
    return score(spec, golden, entry)


@dataclass
class Targets:
    """Which environments the http gate queries, and what the store says runs there."""

    urls: dict[str, str] = field(default_factory=dict)  # candidate/baseline -> base URL
    known: dict[str, dict[str, Any]] = field(default_factory=dict)  # entries decided without a query
    sha256: dict[str, str] = field(default_factory=dict)
    baseline_build: int | None = None
    environment: str | None = None


def http_targets(ctx: StepContext, spec: ModelCheckSpec) -> Targets:
    index = [s.name for s in ctx.pipeline.steps].index(ctx.step.name)
    env = candidate_environment(ctx.pipeline, index)
    if env is None:  # the pipeline checks refuse this; a hand-built Pipeline could still get here
        raise StepFailed("the http gate has no environment to judge: set environment: or deploy before it")
    t = Targets(environment=env)
    dep = ctx.store.get_deployment(ctx.build.repo, env)
    if dep is None or dep.build_id != ctx.build.id:
        runs = f"build #{dep.build_number}" if dep else "nothing"
        t.known["candidate"] = {
            "ok": False,
            "error": f"{env} runs {runs}, not this build (#{ctx.build.number}): deploy it there first",
        }
    else:
        t.urls["candidate"], t.sha256["candidate"] = environment_url(ctx, env), dep.model_sha256
    if spec.compare_to is not None:
        base = ctx.store.get_deployment(ctx.build.repo, spec.compare_to)
        if base is None:
            error = f"nothing is deployed to {spec.compare_to} yet"
            t.known["baseline"] = {"ok": False, "deployed": False, "error": error}
        else:
            t.urls["baseline"], t.sha256["baseline"] = (
                environment_url(ctx, spec.compare_to),
                base.model_sha256,
            )
            t.baseline_build = base.build_number
    return t


def run_http(ctx: StepContext, spec: ModelCheckSpec, golden: GoldenSet) -> tuple[dict[str, Any], Targets]:
    t = http_targets(ctx, spec)
    shape = Shape(spec.request, spec.response, spec.task)
    for label, url in t.urls.items():
        ctx.log.line(
            f"{label}: {spec.request.method} {url}{shape.path} "
            f"({spec.request.preset}, {shape.batch_size} row(s) per request)"
        )
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gate") as pool:
        futures = {
            label: pool.submit(measure, Client(url, shape, sleep=ctx.cancel.wait), spec, golden)
            for label, url in t.urls.items()
        }
        try:
            entries = {label: f.result() for label, f in futures.items()}
        except InterruptedError:
            ctx.stopped()
            raise
    entries.update(t.known)
    for label, sha in t.sha256.items():
        if sha and label in entries:
            entries[label]["sha256"] = sha
    return entries, t


# -- in_image mode -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalRequest:
    """One run of the evaluator in the image: the container, and what is copied into it."""

    image: str
    golden: GoldenSet
    candidate: ModelArtifact
    baseline: ModelArtifact | None = None
    loader: str | None = None
    proba: bool = False
    latency_rows: int = 1000
    labels: dict[str, str] = field(default_factory=dict)

    def command(self) -> list[str]:
        argv = [
            "python3",
            f"{GATE_DIR}/evaluate.py",
            "--input",
            f"{GATE_DIR}/rows.json",
            "--model",
            f"candidate={GATE_DIR}/candidate/{self.candidate.path.name}",
        ]
        if self.baseline is not None:
            argv += ["--model", f"baseline={GATE_DIR}/baseline/{self.baseline.path.name}"]
        if self.loader:
            argv += ["--loader", self.loader]
        if self.proba:
            argv.append("--proba")
        return [*argv, "--latency-rows", str(self.latency_rows)]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``DockerClient.containers.create``: no network, nothing mounted."""
        return {
            "image": self.image,
            "command": self.command(),
            "labels": dict(self.labels),
            "network_disabled": True,
            "detach": True,
        }

    def files(self) -> dict[str, bytes | Path]:
        """Archive member name (under /tmp) -> content: the script, the rows, each model's files."""
        rows = json.dumps({"features": list(self.golden.features), "rows": self.golden.matrix()})
        out: dict[str, bytes | Path] = {
            "mlship-gate/evaluate.py": EVALUATOR,
            "mlship-gate/rows.json": rows.encode(),
        }
        for label, art in (("candidate", self.candidate), ("baseline", self.baseline)):
            for f in art.files() if art else []:
                out[f"mlship-gate/{label}/{f.name}"] = f
        return out

    def archive(self) -> bytes:
        """The tar stream ``put_archive`` extracts into /tmp (readable by any user of the image)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d in sorted({str(Path(n).parent) for n in self.files()}):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for name, content in self.files().items():
                data = content.read_bytes() if isinstance(content, Path) else content
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def parse_report(stdout: str) -> dict[str, Any]:
    """The JSON document the evaluator printed (its last non-empty stdout line)."""
    lines = [x for x in stdout.splitlines() if x.strip()]
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        tail = f"; its output ended with: {lines[-1][:300]}" if lines else ""
        raise StepFailed(f"the in-image evaluator printed no JSON report (has the image python3?){tail}")
    return report


def run_evaluate(ctx: StepContext, req: EvalRequest) -> str:
    """Run the evaluation container; return its stdout (stderr goes to the log)."""
    with step_container(
        ctx, req.kwargs(), req.image, "model_check", refused="model_check could not run the evaluation"
    ) as container:
        container.put_archive("/tmp", req.archive())  # noqa: S108
        ctx.log.line(f"$ {' '.join(req.command())}  (in {req.image})")
        container.start()
        code = _wait_exit(container)
        out = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        err = container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
    ctx.stopped()
    if err.strip():
        ctx.log.write(err if err.endswith("\n") else err + "\n", "stderr")
    if code != 0:
        ctx.record.exit_code = code
        raise StepFailed(
            f"the in-image evaluator exited with code {code}: {err.strip()[-STDERR_TAIL:]}", exit_code=code
        )
    return out


@dataclass
class Baseline:
    artifact: ModelArtifact | None = None
    build_number: int | None = None
    entry: dict[str, Any] | None = None  # why the deployed model cannot be evaluated


def find_baseline(ctx: StepContext, spec: ModelCheckSpec) -> Baseline:
    """The model of the build deployed in ``compare_to``, from that build's artifacts (here or in the
    registry)."""
    if spec.compare_to is None:
        return Baseline()
    dep = ctx.store.get_deployment(ctx.build.repo, spec.compare_to)
    if dep is None:
        return Baseline(
            entry={"ok": False, "deployed": False, "error": f"nothing is deployed to {spec.compare_to} yet"}
        )
    where = f"build #{dep.build_number} (deployed to {spec.compare_to})"

    def missing(why: str) -> Baseline:
        return Baseline(None, dep.build_number, {"ok": False, "deployed": True, "error": f"{where}: {why}"})

    try:  # this worker's artifacts, else the registry the build published its model to
        art = model_registry.local_or_fetched(
            ctx, dep.build_id, spec.model, model_registry.push_auth(ctx.pipeline)
        )
    except StepFailed as exc:
        return missing(str(exc))
    if art is None:
        return missing(f"no model artifact {spec.model} (its model came from the operator's volume)")
    if dep.model_sha256 and art.sha256 != dep.model_sha256:
        return missing(f"its artifact {spec.model} no longer has the deployed sha256 {dep.model_sha256[:16]}")
    ctx.log.line(f"baseline: {where}, model sha256 {art.sha256[:16]}")
    return Baseline(art, dep.build_number)


def in_image_entry(
    spec: ModelCheckSpec, golden: GoldenSet, raw: dict[str, Any], serving: dict[str, Any]
) -> dict[str, Any]:
    if not raw.get("loaded"):
        return {"ok": False, "error": raw.get("error") or "not evaluated"}
    entry = {
        **raw,
        "ok": True,
        "rows": len(golden.rows),
        "how": f"under scikit-learn {serving.get('sklearn', '?')}",
    }
    return score(spec, golden, entry)


def run_in_image(
    ctx: StepContext, spec: ModelCheckSpec, golden: GoldenSet
) -> tuple[dict[str, Any], Baseline]:
    if not ctx.build.image:
        raise StepFailed("no image to evaluate the model in: add a docker_build step before this one")
    candidate = find_model(ctx.settings.workspace, ctx.build.id, spec.model)
    if candidate is None:
        raise StepFailed(
            f"no model at {spec.model} in this build's artifacts: a docker_run step with "
            f"artifacts: /artifacts must write it (--out /artifacts/{Path(spec.model).parent})"
        )
    ctx.log.line(f"candidate: {spec.model}, sha256 {candidate.sha256[:16]}")
    base = find_baseline(ctx, spec)
    req = EvalRequest(
        image=ctx.build.image,
        golden=golden,
        candidate=candidate,
        baseline=base.artifact,
        loader=spec.loader,
        proba=spec.task == "classification",
        latency_rows=spec.latency.batch_rows if spec.latency else 1000,
        labels=ctx.container_labels(),
    )
    report = parse_report(run_evaluate(ctx, req))
    serving, models = report.get("serving", {}), report.get("models", {})
    entries = {
        "candidate": in_image_entry(
            spec, golden, models.get("candidate") or {"error": report.get("error")}, serving
        )
    }
    if base.artifact is not None:
        entries["baseline"] = in_image_entry(spec, golden, models.get("baseline") or {}, serving)
    elif base.entry is not None:
        entries["baseline"] = base.entry
    return entries, base


# -- the step ----------------------------------------------------------------------------------------


def read_golden_set(ctx: StepContext, spec: ModelCheckSpec) -> GoldenSet:
    try:
        golden = read_golden(inside(ctx.workspace, spec.golden, "golden set"), spec.target, spec.golden)
    except GoldenError as exc:
        raise StepFailed(str(exc)) from None
    names = ", ".join(golden.features[:6]) + (" …" if len(golden.features) > 6 else "")
    ctx.log.line(
        f"golden set: {spec.golden}, {len(golden.rows)} rows, target '{spec.target}', "
        f"{len(golden.features)} features ({names})"
    )
    return golden


def diff_report(spec: ModelCheckSpec, golden: GoldenSet, entries: dict[str, Any]) -> dict[str, Any] | None:
    cand, base = entries.get("candidate") or {}, entries.get("baseline") or {}
    if not (cand.get("ok") and base.get("ok")):
        return None
    pc, pb = cand.get("probabilities"), base.get("probabilities")
    proba = (pc, pb) if pc is not None and pb is not None else None
    d = spec.diff
    return prediction_diff(
        golden, cand["predictions"], base["predictions"], spec.task, d.tolerance, d.show, proba
    )


def model_check(ctx: StepContext) -> None:
    """The ``model_check`` step (see the module docstring)."""
    spec: ModelCheckSpec = ctx.step.spec
    golden = read_golden_set(ctx, spec)
    extra: dict[str, Any] = {}
    if spec.mode == "in_image":
        entries, base = run_in_image(ctx, spec, golden)
        baseline_build = base.build_number
    else:
        entries, targets = run_http(ctx, spec, golden)
        baseline_build, extra["environment"] = targets.baseline_build, targets.environment
    diff = diff_report(spec, golden, entries)
    stored = {k: {f: v for f, v in e.items() if f not in MEASURED_ONLY} for k, e in entries.items()}
    result = judge(
        {"models": {"candidate": stored["candidate"], "baseline": stored.get("baseline")}}, rules(spec)
    )
    for line in [*result.table(), *(diff_lines(diff) if diff else [])]:
        ctx.log.line(line)
    verdict = "passed" if result.passed else "FAILED"
    against = (
        f" (baseline: build #{baseline_build} in {spec.compare_to})" if baseline_build is not None else ""
    )
    ctx.log.line(f"model gate {verdict}{against}")
    gate = {
        **result.to_dict(),
        **extra,
        "mode": spec.mode,
        "task": spec.task,
        "compare_to": spec.compare_to,
        "baseline_policy": spec.baseline,
        "baseline_build": baseline_build,
        "golden": spec.golden,
        "target": spec.target,
        "model": spec.model,
        "candidate_sha256": stored["candidate"].get("sha256", ""),
        "diff": diff,
    }
    ctx.build.gate = {**ctx.build.gate, ctx.step.name: gate}
    ctx.record.details["gate"] = gate
    with contextlib.suppress(Exception):
        ctx.save()
    with contextlib.suppress(Exception):  # a metric must never decide a verdict
        ctx.store.incr_counter("gates", "passed" if result.passed else "failed")
    if not result.passed:
        raise StepFailed(failure_message(result))


def register(kinds: dict[str, Any]) -> None:
    kinds["model_check"] = model_check
