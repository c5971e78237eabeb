"""The ``model_check`` step: the model gate.

Runs ``python3 -m inference.evaluate`` inside the image the build just made (so the model is loaded
with exactly the library versions that will serve it), on the golden set from the repository, for
the candidate model from the build's artifacts and for the model of the build deployed in
``compare_to``. ``orchestrator.gate.rules.judge`` applies the pipeline's rules to the JSON report; the
comparison goes into the log, onto the build (``build.gate[step]``) and the step's details. A broken
rule fails the step, so the deploy steps after it do not run.

The request is pure data (``EvalRequest``: exact container kwargs, tested as such); the thin layer
below runs it like ``docker_run``: labelled, network disabled, removed afterwards, stopped on cancel
and timeout.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.build.artifacts import ModelArtifact, find_model, inside
from orchestrator.errors import StepFailed
from orchestrator.gate.rules import Bound, GateResult, GateRules, judge
from orchestrator.pipeline import ModelCheckSpec
from orchestrator.steps.base import StepContext
from orchestrator.steps.docker import _wait_exit, step_container

GATE_ROOT = "/gate"
STDERR_TAIL = 2000


@dataclass(frozen=True)
class EvalRequest:
    """One ``inference.evaluate`` run: what is mounted where, and the command."""

    image: str
    golden: Path
    candidate: ModelArtifact
    baseline: ModelArtifact | None = None
    latency_rows: int = 1000
    labels: Mapping[str, str] = field(default_factory=dict)

    def command(self) -> list[str]:
        argv = [
            "python3",
            "-m",
            "inference.evaluate",
            "--golden",
            f"{GATE_ROOT}/golden/{self.golden.name}",
            "--model",
            f"candidate={GATE_ROOT}/candidate/{self.candidate.path.name}",
        ]
        if self.baseline is not None:
            argv += ["--model", f"baseline={GATE_ROOT}/baseline/{self.baseline.path.name}"]
        return [*argv, "--latency-rows", str(self.latency_rows)]

    def volumes(self) -> dict[str, dict[str, str]]:
        """Everything read-only: the golden file, and each model's directory (model + its model.json)."""
        vols = {
            str(self.golden): {"bind": f"{GATE_ROOT}/golden/{self.golden.name}", "mode": "ro"},
            str(self.candidate.path.parent): {"bind": f"{GATE_ROOT}/candidate", "mode": "ro"},
        }
        if self.baseline is not None:
            vols[str(self.baseline.path.parent)] = {"bind": f"{GATE_ROOT}/baseline", "mode": "ro"}
        return vols

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``DockerClient.containers.create``."""
        return {
            "image": self.image,
            "command": self.command(),
            "labels": dict(self.labels),
            "volumes": self.volumes(),
            "network_disabled": True,
            "detach": True,
        }


def rules(spec: ModelCheckSpec) -> GateRules:
    """The pipeline's rules as ``gate.GateRules``."""
    lat = spec.latency
    return GateRules(
        thresholds={k: Bound(min=b.min, max=b.max) for k, b in spec.thresholds.items()},
        no_worse_than_deployed=dict(spec.no_worse_than_deployed),
        single_ms=lat.single_ms if lat else None,
        batch_ms=lat.batch_ms if lat else None,
    )


def parse_report(stdout: str) -> dict[str, Any]:
    """The JSON document ``inference.evaluate`` printed (its last non-empty stdout line)."""
    lines = [x for x in stdout.splitlines() if x.strip()]
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        tail = f"; its output ended with: {lines[-1][:300]}" if lines else ""
        raise StepFailed(
            f"inference.evaluate printed no JSON report (does the image ship inference/evaluate.py?){tail}"
        )
    return report


def failure_message(result: GateResult) -> str:
    """``model gate failed: <checks>`` (with the reason when the model did not load at all)."""
    failed = [c for c in result.checks if not c.passed]
    msg = "model gate failed: " + ", ".join(c.name for c in failed)
    if failed and failed[0].name == "loads":
        msg += f" ({failed[0].detail})"
    return msg


@dataclass
class Baseline:
    artifact: ModelArtifact | None = None
    build_number: int | None = None
    note: str = ""  # why the deployed model cannot be compared (then: thresholds only)


def find_baseline(ctx: StepContext, spec: ModelCheckSpec) -> Baseline:
    """The model of the build deployed in ``compare_to``, from that build's artifacts."""
    if spec.compare_to is None:
        return Baseline()
    dep = ctx.store.get_deployment(ctx.build.repo, spec.compare_to)
    if dep is None:
        ctx.log.line(f"nothing is deployed to {spec.compare_to} yet: no baseline model, first model")
        return Baseline()
    where = f"build #{dep.build_number} (deployed to {spec.compare_to})"
    try:
        art = find_model(ctx.settings.workspace, dep.build_id, spec.model)
    except StepFailed as exc:
        return Baseline(None, dep.build_number, f"{where}: {exc}")
    if art is None:
        return Baseline(
            None,
            dep.build_number,
            f"{where} has no model artifact {spec.model} (its model came from the operator's volume)",
        )
    if dep.model_sha256 and art.sha256 != dep.model_sha256:
        return Baseline(
            None,
            dep.build_number,
            f"{where}: its artifact {spec.model} no longer has the deployed sha256 {dep.model_sha256[:16]}",
        )
    ctx.log.line(f"baseline: {where}, model sha256 {art.sha256[:16]}")
    return Baseline(art, dep.build_number)


def run_evaluate(ctx: StepContext, req: EvalRequest) -> str:
    """Run the evaluation container; return its stdout (stderr goes to the log)."""
    with step_container(
        ctx, req.kwargs(), req.image, "model_check", refused="model_check could not run the evaluation"
    ) as container:
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
            f"inference.evaluate exited with code {code}: {err.strip()[-STDERR_TAIL:]}", exit_code=code
        )
    return out


def model_check(ctx: StepContext) -> None:
    """The ``model_check`` step (see the module docstring)."""
    spec: ModelCheckSpec = ctx.step.spec
    if not ctx.build.image:
        raise StepFailed("no image to evaluate the model in: add a docker_build step before this one")
    golden = inside(ctx.workspace, spec.golden, "golden set")
    candidate = find_model(ctx.settings.workspace, ctx.build.id, spec.model)
    if candidate is None:
        raise StepFailed(
            f"no model at {spec.model} in this build's artifacts: a docker_run step with "
            f"artifacts: /artifacts must write it (--out /artifacts/{Path(spec.model).parent})"
        )
    ctx.log.line(f"candidate: {spec.model}, sha256 {candidate.sha256[:16]}; golden set: {spec.golden}")
    base = find_baseline(ctx, spec)
    req = EvalRequest(
        image=ctx.build.image,
        golden=golden,
        candidate=candidate,
        baseline=base.artifact,
        latency_rows=spec.latency.batch_rows if spec.latency else 1000,
        labels=ctx.container_labels(),
    )
    report = parse_report(run_evaluate(ctx, req))
    if base.note:
        ctx.log.line(f"baseline: {base.note}; compared to thresholds only", "stderr")
        report.setdefault("models", {})["baseline"] = {"loaded": False, "error": base.note}
    result = judge(report, rules(spec))
    for line in result.table():
        ctx.log.line(line)
    verdict = "passed" if result.passed else "FAILED"
    ctx.log.line(
        f"model gate {verdict}"
        + (
            f" (baseline: build #{base.build_number} in {spec.compare_to})"
            if base.build_number is not None
            else ""
        )
    )
    gate = {
        **result.to_dict(),
        "compare_to": spec.compare_to,
        "baseline_build": base.build_number,
        "golden": spec.golden,
        "model": spec.model,
        "candidate_sha256": candidate.sha256,
    }
    ctx.build.gate = {**ctx.build.gate, ctx.step.name: gate}
    ctx.record.details["gate"] = gate
    with contextlib.suppress(Exception):
        ctx.save()
    if not result.passed:
        raise StepFailed(failure_message(result))


def register(kinds: dict[str, Any]) -> None:
    kinds["model_check"] = model_check
