"""A deploy of one environment: under its lock, every host swapped ``parallelism`` at a time (undone
if one fails), the deployment recorded as soon as every edge serves the new build, then the old
servers drained and retired."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NoReturn

from orchestrator import defaults
from orchestrator.deploy import policy as deployments
from orchestrator.deploy import strategy as strategies
from orchestrator.deploy.fence import Fence
from orchestrator.deploy.plan import (
    Plan,
    deploy_ref,
    edge_image_for,
    make_plan,
    rollback_image,
    ship_model,
    targets,
)
from orchestrator.deploy.ssh import RemoteHost, key_from_settings
from orchestrator.deploy.swap import HostDeploy, HostState
from orchestrator.errors import Cancelled, DeployError, Fenced, StepFailed, Superseded
from orchestrator.models import Deployment
from orchestrator.pipeline.policy import ensure_deploy_targets

if TYPE_CHECKING:
    from orchestrator.steps.base import StepContext

CONNECT_TIMEOUT = defaults.DEPLOY_CONNECT_TIMEOUT


def rollout(
    ctx: StepContext,
    plan: Plan,
    lock: deployments.EnvironmentLock,
    fence: Fence,
    on_batch: Callable[[list[HostState]], None] = lambda switched: None,
    strategy: strategies.Switch | strategies.Progressive | None = None,
) -> list[HostState]:
    """Phase 1 on every host, ``parallelism`` at a time, ``on_batch`` (the hosts switched so far)
    after each batch, then the strategy's traffic moves (a progressive strategy reports every host
    once it reached 100%); undo the changed hosts if one fails, unless this deploy was fenced."""
    strat = strategy or strategies.Switch()
    key = key_from_settings(ctx.settings, ctx.settings.deploy_key_name(ctx.build.repo))
    states = [HostState(t) for t in targets(plan.env)]
    done: list[HostState] = []
    par = max(1, plan.env.parallelism)

    def one(state: HostState) -> None:
        state.ssh = RemoteHost(state.target, key, ctx.settings.known_hosts, CONNECT_TIMEOUT)
        state.ssh.connect()
        HostDeploy(ctx, plan, state, fence).switch(shift=strat.per_host)

    try:
        for i in range(0, len(states), par):
            batch = states[i : i + par]
            if lock.lost.is_set():
                raise DeployError(f"lost the deploy lock {lock.name} (Redis unreachable?); rollout stopped")
            with ThreadPoolExecutor(len(batch)) as pool:
                futures = [pool.submit(one, s) for s in batch]
                errors = []
                for s, f in zip(batch, futures, strict=True):
                    try:
                        f.result()
                    except Exception as exc:
                        errors.append(exc)
                    if s.switched or s.container or s.edge_created:
                        done.append(s)
                if errors:
                    raise next((e for e in errors if isinstance(e, Fenced)), errors[0])
            if strat.per_host:
                on_batch([s for s in states if s.switched])
        strat.run([HostDeploy(ctx, plan, s, fence) for s in states])
        if not strat.per_host:
            on_batch(states)
    except BaseException as exc:
        unwind(ctx, plan, states, done, fence, exc)
    return states


def unwind(
    ctx: StepContext,
    plan: Plan,
    states: list[HostState],
    done: list[HostState],
    fence: Fence,
    exc: BaseException,
) -> NoReturn:
    """After a failure: undo the hosts this deploy changed (if it still holds lease and lock), record
    the outcome and raise."""
    if isinstance(exc, Fenced) or (done and not fence.holds()):
        fenced(ctx, plan, states, fence.fenced or exc)
    if done:
        ctx.log.line(
            f"rolling back {len(done)} host(s) already changed: " + ", ".join(str(s.target) for s in done),
            "stderr",
        )
    for s in reversed(done):
        with contextlib.suppress(Exception):
            HostDeploy(ctx, plan, s, fence).undo()
    close(states)
    record_outcome(ctx, plan, states, "failed")
    if isinstance(exc, Cancelled):
        ctx.stopped()
    raise exc


def fenced(ctx: StepContext, plan: Plan, states: list[HostState], exc: BaseException) -> NoReturn:
    """Stop without touching a host again: another deploy may own them now (no undo, no record)."""
    ctx.log.line(f"{exc}; hosts are left as they are, not rolled back", "stderr")
    close(states)
    record_outcome(ctx, plan, states, "fenced")
    raise exc if isinstance(exc, Fenced) else Fenced(str(exc))


def close(states: list[HostState]) -> None:
    for s in states:
        if s.ssh is not None:
            s.ssh.close()


def record_outcome(ctx: StepContext, plan: Plan, states: list[HostState], outcome: str) -> None:
    model = {"model_sha256": plan.model.sha256, "model_path": plan.model.path} if plan.model else {}
    ctx.record.details.update(
        {
            "environment": plan.env_name,
            "image": plan.image,
            "action": plan.action,
            "outcome": outcome,
            "build_number": plan.number,
            "hosts": {str(s.target): s.details() for s in states},
            **model,
        }
    )
    ctx.build.deploys = {
        **ctx.build.deploys,
        plan.env_name: {"outcome": outcome, "image": plan.image, "number": plan.number, **model},
    }
    with contextlib.suppress(Exception):
        ctx.save()


def run(ctx: StepContext, env_name: str, action: str) -> None:
    b = ctx.build
    image = deploy_ref(b.image, b.digest)
    if action == "rollback" and b.trigger != "rollback":
        image = rollback_image(ctx, env_name)
    if not image:
        raise StepFailed("nothing to deploy: no image was pushed by an earlier step (add a docker_push step)")
    plan = make_plan(ctx, env_name, action, image)
    ensure_deploy_targets(ctx.settings, b.repo, env_name, plan.env)  # before any connection
    lock = deployments.EnvironmentLock(ctx.store, b.repo, env_name, b.id)
    deadline = ctx.deadline if ctx.deadline != float("inf") else time.monotonic() + 3600
    lock.acquire(
        deadline,
        ctx.cancel,
        lambda holder: ctx.log.line(f"waiting for the {env_name} deploy lock (held by {holder})"),
    )
    try:
        current = ctx.store.get_deployment(b.repo, env_name)
        newer = deployments.superseded_by(current, plan.number, action)
        if newer is not None:
            ctx.record.details.update(
                {"environment": env_name, "outcome": "superseded", "deployed": newer.build_number}
            )
            ctx.log.line(
                f"build #{plan.number} is older than #{newer.build_number}, which is deployed to "
                f"{env_name}: superseded, not deployed"
            )
            raise Superseded(
                f"#{newer.build_number} is already deployed to {env_name}; build "
                f"#{plan.number} is older and was not deployed",
                environment=env_name,
                deployed=newer.build_number,
            )
        ctx.log.line(
            f"{action} {image} to {env_name} ({len(plan.env.hosts)} host(s), parallelism "
            f"{plan.env.parallelism})"
        )
        history = ctx.store.deployment_history(b.repo, env_name, limit=20)
        edge_ref, edge_tag = edge_image_for(ctx, plan)
        plan = dataclasses.replace(
            plan, model=ship_model(ctx, plan, history), edge_image=edge_ref, edge_tag=edge_tag
        )
        if plan.model is not None:
            ctx.log.line(f"model: sha256 {plan.model.sha256[:16]}, served from {plan.model.path}")
        fence = Fence(ctx.store, b.id, ctx.lease_token, [(lock.name, lock.owner)])
        strat = strategies.for_step(ctx, plan)
        record = Deployment(
            repo=b.repo,
            environment=env_name,
            build_id=plan.build_id,
            build_number=plan.number,
            image=image,
            sha=b.sha,
            hosts=[str(t) for t in targets(plan.env)],
            action=action,
            model_sha256=plan.model.sha256 if plan.model else "",
            model_path=plan.model.path if plan.model else "",
        )

        def record_batch(switched: list[HostState]) -> None:
            # After every batch, so the record always says which host runs what: a worker lost
            # between batches leaves a mixed record, not one naming the old build everywhere.
            # Once every edge sends traffic to the new containers it is complete, written before
            # the old ones are drained and retired (the next deploy removes those left behind).
            new = dataclasses.replace(record, container=switched[0].container if switched else "")
            fence.check("recording the deployment")
            current = ctx.store.get_deployment(b.repo, env_name)
            hosts = {str(s.target): s.container for s in switched}
            dep, complete = deployments.after_batch(current, new, hosts)
            ctx.store.set_deployment(dep, complete=complete)

        states = rollout(ctx, plan, lock, fence, record_batch, strat)
        recorded = ctx.store.get_deployment(b.repo, env_name) or record
        try:
            strat.watch(states, fence, current, recorded)  # keeps the old containers; may roll back
            # Not cancellable: traffic already moved. Old servers leave once their sessions end.
            ctx.log.line(f"draining the old servers (at most {plan.env.drain_seconds:g}s)")
            drain_until = time.monotonic() + plan.env.drain_seconds
            prune = deployments.images_to_prune(history, image)
            keep = {m[:16] for d in ctx.store.deployment_records() for m in d.model_sha256s()}
            for s in states:
                host = HostDeploy(ctx, plan, s, fence)
                host.retire_old(drain_until, prune)
                host.prune_models(keep)
        finally:
            close(states)
        record_outcome(ctx, plan, states, "deployed")
        ctx.log.line(f"{env_name} now runs build #{plan.number} ({image})")
    finally:
        lock.release()
