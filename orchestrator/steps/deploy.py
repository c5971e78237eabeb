"""The ``deploy`` and ``rollback`` steps: a health-checked swap behind a per-host HAProxy edge, over SSH.

For each host (``parallelism`` at a time), under the environment lock:

1. pull the image and mlship's edge image (after a registry login with a throw-away client config);
2. ship the build's model into the host's model volume (a helper container of the edge image);
3. make sure the edge ``<name>-edge`` runs (first deploy: start it; the old TCP edge: take it over),
   remove servers and app containers left by an interrupted deploy, then start the new app container
   ``<name>-b<number>`` beside the old one on ``<name>-net``;
4. add it to the edge at weight 0 and wait for the edge's own HTTP check (``health:``) to pass —
   on failure it is removed, the old one keeps serving, and the step fails with its last log lines;
5. give it the weight and set the old servers to drain: new requests go to the new container (or,
   with a ``strategy:``, a canary, shadow and/or watch over every host at once:
   orchestrator/deploy/strategy.py).

When every host has switched, the deployment is recorded; then the old servers drain (until their
sessions end, at most ``drain_seconds``), leave the edge and their containers are stopped and removed.
If a host fails, the hosts already switched get their old servers back (still running) and the new
ones are removed. See docs/deploy.md.
"""

from __future__ import annotations

from typing import Any

from orchestrator.deploy.rollout import run
from orchestrator.steps.base import StepContext


def deploy(ctx: StepContext) -> None:
    """The ``deploy`` step (also the single step of a promote build)."""
    spec = ctx.step.spec
    if getattr(spec, "promote", "auto") == "manual" and ctx.build.trigger != "promote":
        ctx.record.details.update({"environment": spec.environment, "outcome": "awaiting promote"})
        ctx.log.line(
            f"{spec.environment} is deployed only by promote (promote: manual): promote build id "
            f"{ctx.build.id} to {spec.environment} from the build page, the API or the CLI"
        )
        return
    run(ctx, spec.environment, "promote" if ctx.build.trigger == "promote" else "deploy")


def rollback(ctx: StepContext) -> None:
    """The ``rollback`` step: the same health-checked swap, with the previous deployment's image."""
    run(ctx, ctx.step.spec.environment, "rollback")


def register(kinds: dict[str, Any]) -> None:
    kinds.update({"deploy": deploy, "rollback": rollback})
