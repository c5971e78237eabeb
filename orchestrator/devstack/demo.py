"""The demo: a merge in the local example repository becomes a deployed model answering a prediction.

Everything goes through the public surfaces, as it would with GitHub: git for the change, a signed
webhook for the merge, the store for following the build, HTTP for the prediction.
"""

from __future__ import annotations

import re
import time
from typing import Any

import requests
import yaml

from inference.schema import SEED_EXAMPLE
from orchestrator.devstack import deliveries as demo
from orchestrator.devstack.stack import REPO_NAME, Say, Stack
from orchestrator.store import Store

SEED_REQUEST = SEED_EXAMPLE  # the seed project's example request, as the service defines it
FINISHED = {"success", "failed", "error", "cancelled", "superseded"}


def environments(pipeline_text: str, variables: dict[str, str]) -> dict[str, Any]:
    """The pipeline's environments with ${VARS} filled from the server vars (demo use only)."""
    text = re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: variables.get(m.group(1), m.group(0)), pipeline_text)
    envs: dict[str, Any] = (yaml.safe_load(text) or {}).get("environments", {})
    return envs


def _gate_table(result: dict[str, Any]) -> list[str]:
    from orchestrator.gate.rules import Check, GateResult

    checks = [Check(**c) for c in result.get("checks", [])]
    return GateResult(
        bool(result.get("passed")),
        checks,
        result.get("candidate") or {},
        result.get("baseline"),
        result.get("note", ""),
    ).table()


def follow_build(store: Store, build_id: int, say: Say, timeout: float = 1800) -> str:
    """Print step transitions (and the log's last line now and then) until the build finishes."""
    seen: dict[str, str] = {}
    after, last_print = "0-0", 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        build = store.get_build(build_id)
        for step in build.steps:
            if seen.get(step.name) != str(step.status):
                seen[step.name] = str(step.status)
                took = f" in {step.duration:.1f}s" if step.duration and str(step.status) != "running" else ""
                say(f"  step {step.name}: {step.status}{took}" + (f" — {step.error}" if step.error else ""))
        entries = store.read_log(build_id, after=after, count=5000)
        if entries:
            after = entries[-1][0]
            if time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                say(f"    … {entries[-1][1].get('text', '')[:110]}")
        if str(build.status) in FINISHED:
            return str(build.status)
        time.sleep(0.5)
    return "timeout"


def run_demo(stack: Stack, say: Say) -> bool:
    """Merge a change, send the signed deliveries, follow the build, print a prediction."""
    assert stack.origin and stack.config_path
    store = Store.from_url(stack.redis_url or "")
    config = yaml.safe_load(stack.config_path.read_text())
    envs = environments((stack.origin.work / "pipeline.yaml").read_text(), config["vars"])
    # No model volume to seed: the pipeline's train step makes the model, the model gate checks it
    # against Prod's, and the deploy ships it to each host's model volume (docs/pipeline.md).

    branch = f"demo-{int(time.time())}"
    head = stack.origin.commit(
        branch,
        {"inference/CHANGELOG.md": f"- {branch}: retrain with more trees\n"},
        "Retrain the house-price model",
    )
    before = stack.origin.head("main")
    merge_sha = stack.origin.merge(branch, message=f"Merge pull request #1 from {branch}")
    say(f"merged {branch} into main as {merge_sha[:7]}")
    url = f"{stack.url}/webhooks/github"
    pr = demo.merged_pull_request(
        REPO_NAME,
        stack.origin.url,
        number=1,
        merge_sha=merge_sha,
        head_sha=head,
        head_ref=branch,
        title="Retrain the house-price model",
    )
    sent = demo.send(url, stack.webhook_secret, "pull_request", pr)
    say(f"webhook pull_request → {sent.status} {sent.body}")
    pushed = demo.send(
        url,
        stack.webhook_secret,
        "push",
        demo.push(
            REPO_NAME,
            stack.origin.url,
            ref="refs/heads/main",
            before=before,
            after=merge_sha,
            message="Merge pull request #1",
        ),
    )
    say(f"webhook push         → {pushed.status} {pushed.body}")
    if sent.status != 202:
        say("the merge was not queued; see the deliveries page")
        return False
    build_id = int(sent.body["build"])
    say(f"build #{build_id}: {stack.url}/builds/{build_id}")
    status = follow_build(store, build_id, say)
    say(f"build #{build_id} finished: {status}")
    if status != "success":
        say(f"see the log: {stack.url}/builds/{build_id}")
        return False
    ok = True
    for name, env in envs.items():
        port = env.get("container", {}).get("publish")
        resp = requests.post(f"http://127.0.0.1:{port}/predict", json=SEED_REQUEST, timeout=10)
        say(
            f"{name}: POST http://127.0.0.1:{port}/predict (the seed's request) → "
            f"{resp.status_code} {resp.text}"
        )
    gate = store.get_build(build_id).gate
    for step, result in gate.items():
        say(f"model gate '{step}': " + ("passed" if result.get("passed") else "FAILED"))
        for line in _gate_table(result):
            say(f"  {line}")
        ok = ok and resp.status_code == 200
    return ok
