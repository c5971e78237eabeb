"""Security properties, one test each. Where an existing test already proves part of a property,
its name is given; the test here proves the property end to end on its own."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator import create_app
from orchestrator.build.runner import run_build
from orchestrator.config import Settings
from orchestrator.deploy.ssh import RemoteHost, Target, load_private_key
from orchestrator.devstack.services import GitOrigin
from orchestrator.errors import HostKeyError
from orchestrator.intake import github
from orchestrator.models import BuildStatus
from orchestrator.store import Store
from tests.pipeline.conftest import BUILD_STEP, SMALL_DOCKERFILE, small_pipeline
from tests.web.conftest import TOKEN, Seed, auth
from tests.web.conftest import make_settings as web_settings
from tests.web.test_pages import csrf_of, sign_in
from tests.webhooks.helpers import OLD_SECRET, SECRET, headers, merged_pr, push_to
from tests.webhooks.helpers import settings as webhook_settings

from .conftest import REPO, WEBHOOK_SECRET


@pytest.fixture
def hook(redis_url: str) -> Any:
    return create_app(webhook_settings(redis_url)).test_client()


# -- webhook -----------------------------------------------------------------------------------------


def test_hmac_is_checked_before_the_body_is_parsed(hook: Any, redis_url: str, monkeypatch) -> None:
    """Unsigned or wrongly signed bodies never reach the JSON parser (tests/webhooks: the 401 table)."""
    parsed: list[bytes] = []
    real = github.parse_body
    monkeypatch.setattr(github, "parse_body", lambda b: parsed.append(b) or real(b))
    hostile = [b"[" * 60_000, b"{not json", json.dumps(merged_pr("a" * 40)).encode(), b"\xff\xfe\x00"]
    for body in hostile:
        for sig in (None, "sha256=" + "0" * 64, github.sign(b"guess", body)):
            h = headers("pull_request", body, secret=None)
            if sig:
                h["X-Hub-Signature-256"] = sig
            resp = hook.post("/webhooks/github", data=body, headers=h)
            assert resp.status_code == 401, resp.data
    assert parsed == []
    assert Store.from_url(redis_url).latest_build_id() == 0
    good = json.dumps(merged_pr("b" * 40)).encode()
    assert hook.post("/webhooks/github", data=good, headers=headers("pull_request", good)).status_code == 202
    assert parsed == [good]


def test_no_signature_oracle(hook: Any, redis_url: str, monkeypatch) -> None:
    """Answers and records never contain the expected MAC (or a piece of it), and every configured
    secret is compared with hmac.compare_digest, with no early exit (tests/webhooks/test_github.py:
    test_signature_errors_never_reveal_the_expected_mac covers the pure function)."""
    body = json.dumps(merged_pr("c" * 40)).encode()
    expected = {github.sign(s.encode(), body)[7:] for s in (SECRET, OLD_SECRET)}
    calls: list[tuple[bytes, bytes]] = []
    real = github.hmac.compare_digest
    monkeypatch.setattr(github.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    mac = next(iter(expected))
    guesses = [
        "sha256=" + mac[:-1] + ("0" if mac[-1] != "0" else "1"),
        "sha256=" + mac[:32],
        "sha256=" + mac.upper(),
        "sha1=" + mac,
        "sha256=" + "f" * 64,
    ]
    store = Store.from_url(redis_url)
    for guess in guesses:
        h = headers("pull_request", body, secret=None)
        h["X-Hub-Signature-256"] = guess
        resp = hook.post("/webhooks/github", data=body, headers=h)
        assert resp.status_code == 401
        record = store.get_delivery(h["X-GitHub-Delivery"])
        texts = [resp.get_data(as_text=True), json.dumps(record.to_dict() if record else {})]
        for text in texts:
            for exp in expected:
                assert not any(exp[i : i + 8] in text for i in range(0, 57)), text
    # three distinct secrets configured (two of the repository, one of another): all three compared
    per_request = len(calls) / sum(1 for g in guesses if g.startswith("sha256="))
    assert per_request == 3
    calls.clear()
    assert hook.post("/webhooks/github", data=body, headers=headers("pull_request", body)).status_code == 202
    assert len(calls) == 3  # a match on the first secret still compares the others


def test_one_build_per_delivery_id(redis_url: str) -> None:
    """The same delivery sent 30 times at once, then 10 times more: one build, one job that resolves
    (tests/webhooks/test_endpoint.py: test_same_delivery_twice_at_once_builds_once)."""
    app = create_app(webhook_settings(redis_url))
    body = json.dumps(merged_pr("d" * 40)).encode()
    h = headers("pull_request", body)
    answers: list[tuple[int, int]] = []
    barrier = threading.Barrier(30)

    def send() -> None:
        client = app.test_client()
        barrier.wait()
        r = client.post("/webhooks/github", data=body, headers=h)
        answers.append((r.status_code, r.get_json().get("build")))

    threads = [threading.Thread(target=send) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for _ in range(10):
        r = app.test_client().post("/webhooks/github", data=body, headers=h)
        answers.append((r.status_code, r.get_json().get("build")))
    assert set(answers) == {(202, 1)}, set(answers)
    store = Store.from_url(redis_url)
    assert store.latest_build_id() == 1
    jobs = [str(j) for j in store.r.lrange("rq:queue:builds", 0, -1)]
    assert [store.resolve_ticket(j.removeprefix("build-")) for j in jobs].count(1) == 1


# -- real builds ---------------------------------------------------------------------------------------


def _deliver_and_run(settings: Settings, payload: dict[str, Any], event: str = "push") -> Any:
    app = create_app(settings)
    body = json.dumps(payload).encode()
    resp = app.test_client().post(
        "/webhooks/github", data=body, headers=headers(event, body, secret=WEBHOOK_SECRET)
    )
    assert resp.status_code == 202, resp.get_json()
    store: Store = app.extensions["mlship"].store
    build_id = resp.get_json()["build"]
    run_build(settings, store, build_id, worker_name="security")
    return app, store, store.get_build(build_id)


ECHO_STEP = """\
- name: echo
  docker_run: {command: [echo, "branch=${BRANCH}", "sha=${GIT_SHA}"]}
"""


@pytest.mark.docker
def test_no_command_or_option_injection_from_payload_fields(
    real_settings: Callable[..., Settings],
    git_origin: GitOrigin,
    docker_client: Any,
) -> None:
    """Hostile branch, message and author reach a real build (webhook → checkout → docker) as data."""
    tag = uuid.uuid4().hex[:8]
    markers = [Path(f"/tmp/pwned-{tag}-{i}") for i in range(4)]
    sha = git_origin.commit(
        "main",
        {"pipeline.yaml": small_pipeline(BUILD_STEP + ECHO_STEP), "small/Dockerfile": SMALL_DOCKERFILE},
        f"$(touch {markers[0]})",
    )
    # A branch like --upload-pack=touch ... is refused at intake now (normalize_ref; see
    # tests/webhooks/test_hostile.py): the branch here is valid but unusual, the rest stays hostile.
    branch = "release/-x+y_1.0"
    p = push_to(branch, sha, repo=REPO)
    p["head_commit"]["message"] = f"$(touch {markers[0]}) `touch {markers[2]}`; touch {markers[3]}"
    p["head_commit"]["author"] = {"name": f"'; touch {markers[3]}; '", "username": "$(id)"}
    _, store, build = _deliver_and_run(real_settings(), p)
    assert build.status is BuildStatus.SUCCESS, build.error
    assert build.branch == branch and build.message == p["head_commit"]["message"]
    log = store.log_text(build.id)
    assert f"branch={branch}" in log
    assert not [m for m in markers if m.exists()]
    for c in docker_client.containers.list(all=True, filters={"label": f"mlship.build={build.id}"}):
        pytest.fail(f"container {c.name} left behind")


@pytest.mark.docker
@pytest.mark.parametrize(
    ("option", "allow_key"),
    [
        ("privileged: true", "allow.privileged"),
        ("volumes: ['/var/run/docker.sock:/var/run/docker.sock']", "allow.host_mounts"),
        ("volumes: ['/:/host']", "allow.host_mounts"),
        ("network: host", "allow.host_network"),
    ],
)
def test_pipeline_cannot_escalate_without_server_permission(
    real_settings: Callable[..., Settings],
    git_origin: GitOrigin,
    docker_client: Any,
    option: str,
    allow_key: str,
) -> None:
    """A real build whose pipeline asks for it fails before any step runs, naming the server setting
    (tests/pipeline/test_pipeline_parse.py has the exact messages)."""
    steps = BUILD_STEP + f"- name: escalate\n  docker_run: {{command: [id], {option}}}\n"
    sha = git_origin.commit(
        "main", {"pipeline.yaml": small_pipeline(steps), "small/Dockerfile": SMALL_DOCKERFILE}
    )
    _, _, build = _deliver_and_run(real_settings(), push_to("main", sha, repo=REPO))
    assert build.status is BuildStatus.FAILED
    assert allow_key in build.error and "pipeline.yaml:" in build.error
    assert build.steps == []  # nothing ran: no image was built, no container started
    assert docker_client.containers.list(all=True, filters={"label": f"mlship.build={build.id}"}) == []


@pytest.mark.docker
def test_secrets_never_appear_in_logs_pages_or_api(
    real_settings: Callable[..., Settings], git_origin: GitOrigin, redis_url: str
) -> None:
    """A real build echoes a secret its pipeline references; the Redis log stream, every Redis value,
    the build page, the API JSON and the text log show *** instead."""
    secret = "s3cr3t-" + uuid.uuid4().hex
    steps = BUILD_STEP + (
        "- name: leak\n"
        "  docker_run:\n"
        '    command: [sh, -c, \'echo "token=$TOKEN"; echo "x$${TOKEN}y"; printf %s "$TOKEN" | base64; '
        'echo "$TOKEN" >&2\']\n'
        "    env: {TOKEN: '${secrets.DEPLOY_TOKEN}'}\n"
    )
    sha = git_origin.commit(
        "main", {"pipeline.yaml": small_pipeline(steps), "small/Dockerfile": SMALL_DOCKERFILE}
    )
    settings = real_settings(secrets={"DEPLOY_TOKEN": secret, "API_TOKEN": TOKEN})
    app, store, build = _deliver_and_run(settings, push_to("main", sha, repo=REPO))
    assert build.status is BuildStatus.SUCCESS, build.error
    forms = {secret, __import__("base64").b64encode(secret.encode()).decode()}
    log = store.log_text(build.id)
    assert "token=***" in log and "x***y" in log
    client = app.test_client()
    surfaces = {
        "log stream": json.dumps(store.read_log(build.id, count=100_000)),
        "text log": client.get(f"/api/v1/builds/{build.id}/log").get_data(as_text=True),
        "api": client.get(f"/api/v1/builds/{build.id}").get_data(as_text=True),
        "page": client.get(f"/builds/{build.id}").get_data(as_text=True),
        "list": client.get("/").get_data(as_text=True),
        "sse": client.get(f"/api/v1/builds/{build.id}/log/stream").get_data(as_text=True),
        "redis": _dump_redis(redis_url),
    }
    for where, text in surfaces.items():
        for form in forms:
            assert form not in text, f"the secret appears in the {where}"


def _dump_redis(url: str) -> str:
    import redis

    r = redis.Redis.from_url(url)
    out: list[str] = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        value: Any = {
            "string": r.get,
            "hash": r.hgetall,
            "list": lambda k: r.lrange(k, 0, -1),
            "set": r.smembers,
            "zset": lambda k: r.zrange(k, 0, -1),
            "stream": lambda k: r.xrange(k),
        }[kind](key)
        out.append(repr(value))
    return "\n".join(out)


# -- deploy hosts and models ----------------------------------------------------------------------------


@pytest.mark.ssh
def test_ssh_host_keys_are_verified(deploy_hosts: Any, tmp_path: Path) -> None:
    """Unknown and changed host keys are refused before authentication (tests/deploy/test_ssh.py has
    the messages); only the configured known_hosts file counts, never ~/.ssh."""
    qa = deploy_hosts["qa"]
    key = load_private_key(deploy_hosts.client_key.read_text())
    target = Target("127.0.0.1", qa.port, qa.user)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError, match="unknown"):
        RemoteHost(target, key, empty, 5).connect()
    other = deploy_hosts["prod"].known_hosts_line().split()
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"[127.0.0.1]:{qa.port} {other[1]} {other[2]}\n")
    with pytest.raises(HostKeyError, match="CHANGED"):
        RemoteHost(target, key, changed, 5).connect()
    with RemoteHost(target, key, deploy_hosts.known_hosts, 5) as ok:
        assert ok.run(["true"]).exit_code == 0


class _Touch:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_untrusted_or_tampered_model_is_never_unpickled(tmp_path: Path) -> None:
    """A pickle runs code when loaded: unpinned, wrongly pinned or tampered after pinning, it is
    refused before unpickling (inference/tests/test_model.py covers the skops allow-list)."""
    from inference.model import LoadPolicy, ModelLoadError, load_model

    marker = tmp_path / "unpickled"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_Touch(marker)))
    pinned = hashlib.sha256(path.read_bytes()).hexdigest()
    tampered = tmp_path / "tampered.pkl"
    tampered.write_bytes(pickle.dumps(_Touch(marker)) + b" ")
    (tmp_path / "tampered.json").write_text(json.dumps({"file": "tampered.pkl", "sha256": pinned}))
    cases = [
        (path, LoadPolicy()),
        (path, LoadPolicy(expected_sha256="0" * 64)),
        (tampered, LoadPolicy(expected_sha256=pinned)),
        (tampered, LoadPolicy(allow_unpinned_pickle=True)),
    ]
    for p, policy in cases:
        with pytest.raises(ModelLoadError):
            load_model(p, policy)
        assert not marker.exists(), (p, policy)


# -- API and pages --------------------------------------------------------------------------------------


def _posts(app: Any, prefix: str) -> list[str]:
    out = []
    for rule in app.url_map.iter_rules():
        if "POST" in rule.methods and rule.rule.startswith(prefix):
            out.append(
                re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: "qa" if m.group(1) == "env" else "1", rule.rule)
            )
    return out


def test_writes_need_a_token(redis_url: str) -> None:
    """Every POST of the API: no token 401, a wrong one 403, and nothing is created
    (tests/web/test_api.py: test_writes_need_a_valid_bearer_token covers one endpoint per case)."""
    app = create_app(web_settings(redis_url))
    Seed(app.extensions["mlship"]).build("failed")
    store: Store = app.extensions["mlship"].store
    client = app.test_client()
    posts = _posts(app, "/api/")
    assert len(posts) >= 5, posts
    body = {"repo": REPO, "ref": "main", "environment": "qa"}
    for path in posts:
        assert client.post(path, json=body).status_code == 401, path
        assert client.post(path, json=body, headers=auth("tok-wrong")).status_code == 403, path
        assert client.post(path, json=body, headers={"Authorization": TOKEN}).status_code == 401, path
    assert store.latest_build_id() == 1 and store.get_build(1).status is BuildStatus.FAILED


def test_forms_need_csrf(redis_url: str) -> None:
    """Every form POST (not the API, the webhook or sign-in): signed out 401; signed in without, with a
    forged or with another session's token 403; nothing is created (tests/web/test_pages.py)."""
    app = create_app(web_settings(redis_url))
    b = Seed(app.extensions["mlship"]).build("failed")
    store: Store = app.extensions["mlship"].store
    forms = [p for p in _posts(app, "/") if not p.startswith(("/api/", "/webhooks/", "/login", "/logout"))]
    assert len(forms) >= 4, forms
    alice, mallory = app.test_client(), app.test_client()
    for path in forms:
        assert alice.post(path, data={"repo": REPO, "environment": "qa"}).status_code == 401, path
    sign_in(alice)
    sign_in(mallory)
    foreign = csrf_of(mallory.get(f"/builds/{b.id}").get_data(as_text=True))
    for path in forms:
        for token in (None, "0" * 64, foreign):
            data = {"repo": REPO, "environment": "qa", **({"csrf_token": token} if token else {})}
            assert alice.post(path, data=data).status_code == 403, (path, token)
    assert store.latest_build_id() == 1
    own = csrf_of(alice.get(f"/builds/{b.id}").get_data(as_text=True))
    assert alice.post(f"/builds/{b.id}/rerun", data={"csrf_token": own}).status_code == 303
