"""A hostile pipeline.yaml (issue 18): every escape a committer of one allow-listed repository could
try, each refused with a message that says what was refused and where the server would allow it.

The table runs the same loader the worker runs (``load_pipeline`` with the repository's policy and
the server's real ``Secrets``); the tests below it run real builds on the test bed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import (
    Allow,
    ContainerLimits,
    DeployTarget,
    Reach,
    RepoConfig,
    Secrets,
    Settings,
)
from orchestrator.devstack.services import GitOrigin
from orchestrator.errors import DeployError, PipelineError
from orchestrator.models import Build, BuildStatus
from orchestrator.pipeline import load_pipeline
from orchestrator.pipeline.policy import Policy, ensure_deploy_targets
from orchestrator.steps.docker import run_request
from tests.pipeline.conftest import BUILD_STEP, Builds, small_pipeline
from tests.web.conftest import GitHubStandIn

REPO = "acme/house-price"
VICTIM = "acme/other"
SERVER_SECRETS = {
    "DEPLOY_SSH_KEY": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH",
    "GITHUB_TOKEN": "ghs_servertoken0123456789",
    "API_TOKEN": "api-token-0123456789",
    "CSRF_SECRET": "csrf-secret-0123456789",
    "GITHUB_WEBHOOK_SECRET": "whsec-0123456789",
    "OTHER_WEBHOOK_SECRET": "whsec-other-0123456789",
    "OTHER_SSH_KEY": "other-deploy-key-0123456789",
    "ORCHESTRATOR_REDIS_URL": "redis://:redispw0123@127.0.0.1:6379/0",
    "REGISTRY_PASSWORD": "Reg-PW.0123456789",
    "PROD_DB_PASSWORD": "prod-db-0123456789",
    "OTHER_TOKEN": "other-repo-token-0123456789",
}


def server() -> Settings:
    """Two repositories: ours may use REGISTRY_PASSWORD (anywhere) and PROD_DB_PASSWORD (in prod),
    the volume 'hp-cache' and volumes named 'hp-*', and deploy as deploy@qa:22 / deploy@prod:2222."""
    ours = RepoConfig(
        full_name=REPO,
        clone_url="x",
        reach=Reach(
            secrets=("REGISTRY_PASSWORD",),
            environment_secrets={"prod": ("PROD_DB_PASSWORD",)},
            volumes=("ml_vol",),
            volume_prefix="hp-",
            networks=("hp-net",),
            deploy_targets=(
                DeployTarget(host="qa.example.com", port=22, user="deploy", environments=("qa",)),
                DeployTarget(host="prod.example.com", port=2222, user="deploy", environments=("prod",)),
            ),
            limits=ContainerLimits(memory="1g", max_memory="2g", pids=256, max_pids=1024, max_cpus=2),
        ),
    )
    victim = RepoConfig(
        full_name=VICTIM,
        clone_url="y",
        webhook_secrets=("OTHER_WEBHOOK_SECRET",),
        reach=Reach(
            secrets=("OTHER_TOKEN",),
            deploy_key="OTHER_SSH_KEY",
            deploy_targets=(DeployTarget(host="victim-prod.example.com"),),
        ),
    )
    return Settings(repositories={REPO: ours, VICTIM: victim}, secrets=Secrets(env=SERVER_SECRETS))


HEAD = 'version: 1\nname: hostile\nimage: "reg/hp"\nsteps:\n  - name: build\n    docker_build: {}\n'


def run_step(spec: str) -> str:
    return HEAD + f"  - name: t\n    docker_run: {{command: [id], {spec}}}\n"


def env_block(container: str = "", hosts: str = "[{host: qa.example.com, port: 22, user: deploy}]") -> str:
    return (
        HEAD
        + "  - name: d\n    deploy: {environment: qa}\n"
        + f"environments:\n  qa:\n    hosts: {hosts}\n"
        + f"    container: {{name: hp, {container}}}\n"
    )


# (case, pipeline, what the message must say)
ESCAPES: list[tuple[str, str, str]] = [
    # 1. secrets: the server's own, another repository's, an unlisted one, one scoped to prod
    *[
        (f"server secret {n}", run_step(f"env: {{X: '${{secrets.{n}}}'}}"), "one of the server's own secrets")
        for n in (
            "DEPLOY_SSH_KEY",
            "GITHUB_TOKEN",
            "API_TOKEN",
            "CSRF_SECRET",
            "GITHUB_WEBHOOK_SECRET",
            "OTHER_WEBHOOK_SECRET",
            "OTHER_SSH_KEY",
            "ORCHESTRATOR_REDIS_URL",
            "REDIS_PASSWORD",
        )
    ],
    (
        "another repository's secret",
        run_step("env: {X: '${secrets.OTHER_TOKEN}'}"),
        "secret 'OTHER_TOKEN' is not one this repository may use; allowed here: REGISTRY_PASSWORD",
    ),
    (
        "a worker environment variable",
        run_step("env: {X: '${secrets.PATH}'}"),
        "allowed here: REGISTRY_PASSWORD",
    ),
    (
        "a prod-only secret in a step",
        run_step("env: {X: '${secrets.PROD_DB_PASSWORD}'}"),
        "may be used only under environments.prod",
    ),
    (
        "a prod-only secret in qa",
        env_block("env: {X: '${secrets.PROD_DB_PASSWORD}'}"),
        "may be used only under environments.prod",
    ),
    (
        "a server secret as a step name",
        HEAD + "  - name: '${secrets.GITHUB_TOKEN}'\n    docker_run: {}\n",
        "one of the server's own secrets",
    ),
    # 2. volumes after substitution: $${ cannot hide a host path, nor a variable
    ("host root behind $${", run_step('volumes: ["/:/host$${}"]'), "host path mount '/'"),
    ("docker socket behind $${", run_step('volumes: ["/var/run/docker.sock:/s$${x}"]'), "Docker socket"),
    ("docker socket", run_step('volumes: ["/run/docker.sock:/var/run/docker.sock"]'), "Docker socket"),
    ("socket via a variable", run_step('volumes: ["${SOCK}:/s"]'), "Docker socket"),
    ("relative host path", run_step('volumes: ["../../etc:/e"]'), "host path mount '../../etc'"),
    ("home path", run_step('volumes: ["~/.ssh:/k"]'), "host path mount '~/.ssh'"),
    (
        "the compose Redis data",
        run_step('volumes: ["mlship_redis-data:/data"]'),
        "named volume 'mlship_redis-data' is not one this repository may mount",
    ),
    (
        "the worker's workspace",
        run_step('volumes: ["mlship_workspace:/ws"]'),
        "named volume 'mlship_workspace'",
    ),
    ("mount propagation", run_step('volumes: ["hp-cache:/c:rshared"]'), "the mode must be ro or rw"),
    ("anonymous volume", run_step('volumes: ["/data"]'), "write source:/path/in/container"),
    ("container path with ..", run_step('volumes: ["hp-cache:/../etc"]'), "without '..'"),
    ("deploy host root", env_block('volumes: ["/:/host$${}"]'), "host path mount '/'"),
    ("deploy host socket", env_block('volumes: ["/var/run/docker.sock:/s"]'), "Docker socket"),
    (
        "deploy host: another volume",
        env_block('volumes: ["other_models:/models:ro"]'),
        "named volume 'other_models'",
    ),
    # 3. networks: nothing but none, bridge and the listed ones
    (
        "redis's network namespace",
        run_step("network: 'container:redis'"),
        "network 'container:redis' is not allowed",
    ),
    ("the compose network", run_step("network: mlship_default"), "use one of: none, bridge, hp-net"),
    ("host network", run_step("network: host"), "allow.host_network: true"),
    ("host network via a variable", run_step("network: '${NET}'"), "allow.host_network: true"),
    ("host network via $${", run_step("network: 'ho$${'"), "network 'ho${' is not allowed"),
    # docker options that are not in the schema at all
    *[
        (f"option {k}", run_step(f"{k}: {v}"), f"unknown key '{k}'")
        for k, v in (
            ("cap_add", "[SYS_ADMIN]"),
            ("devices", "['/dev/sda:/dev/sda']"),
            ("ipc", "host"),
            ("pid", "host"),
            ("security_opt", "['seccomp=unconfined']"),
            ("options", "['--privileged']"),
            ("userns_mode", "host"),
            ("extra_hosts", "['redis:127.0.0.1']"),
        )
    ],
    ("privileged", run_step("privileged: true"), "privileged containers are not allowed"),
    ("privileged as a string", run_step("privileged: 'yes'"), "privileged containers are not allowed"),
    # limits: up to the server's, no further
    ("memory above the limit", run_step("memory: 64g"), "memory 64g is above this server's limit of 2g"),
    (
        "pids above the limit",
        run_step("pids_limit: 100000"),
        "pids_limit 100000 is above this server's limit",
    ),
    ("cpus above the limit", run_step("cpus: 64"), "cpus 64 is above this server's limit of 2"),
    ("memory not a size", run_step("memory: lots"), "not a size like 512m"),
    # env and user injection
    ("env name with =", run_step("env: {'LD_PRELOAD=/x A': '1'}"), "environment variable name"),
    ("user with a shell", run_step("user: 'root; id'"), "must be a name or id"),
    # 5. deploy targets: another repository's host, another user or port, another environment's host
    (
        "another repository's prod",
        env_block(hosts="[{host: victim-prod.example.com}]"),
        "root@victim-prod.example.com:22 is not a deploy target of this repository",
    ),
    ("wrong user", env_block(hosts="[{host: qa.example.com, user: root}]"), "root@qa.example.com:22"),
    ("wrong port", env_block(hosts="[{host: qa.example.com, port: 2200, user: deploy}]"), ":2200 is not"),
    (
        "prod host from qa",
        env_block(hosts="[{host: prod.example.com, port: 2222, user: deploy}]"),
        "for environment 'qa'",
    ),
    (
        "host via a variable",
        env_block(hosts="[{host: '${VICTIM_HOST}', user: deploy}]"),
        "deploy@victim-prod.example.com:22 is not a deploy target",
    ),
    # shell on the worker
    (
        "shell step",
        HEAD + "  - name: s\n    shell: {command: [id]}\n",
        "shell steps run on the worker itself",
    ),
    # YAML tricks
    (
        "python tag",
        HEAD + "  - name: t\n    docker_run: !!python/object/apply:os.system [id]\n",
        "tag '!!python/object/apply:os.system' is not allowed",
    ),
    (
        "merge key hides privileged",
        HEAD + "  - name: t\n    docker_run:\n      <<: {privileged: true}\n      command: [id]\n",
        "privileged containers are not allowed",
    ),
    ("duplicate key overrides", run_step("network: bridge, network: host"), "duplicate key 'network'"),
    (
        "billion laughs",
        "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)
        ),
        "YAML bomb",
    ),
]
VARIABLES = {
    "BUILD_NUMBER": "1",
    "SOCK": "/var/run/docker.sock",
    "NET": "host",
    "VICTIM_HOST": "victim-prod.example.com",
}


@pytest.mark.parametrize(("case", "text", "message"), ESCAPES, ids=[c for c, _, _ in ESCAPES])
def test_hostile_pipeline_is_refused_with_a_clear_message(case: str, text: str, message: str) -> None:
    settings = server()
    policy = Policy.for_repo(settings, settings.repositories[REPO])
    with pytest.raises(PipelineError) as err:
        load_pipeline(text, variables=VARIABLES, secrets=settings.secrets, policy=policy)
    assert message in str(err.value), str(err.value)
    assert "pipeline.yaml" in str(err.value)
    for value in SERVER_SECRETS.values():  # a refusal never shows a secret
        assert value not in str(err.value)


def test_what_the_repository_may_reach_is_accepted() -> None:
    """The same policy admits what the server configuration lists (so the refusals above are not a
    loader that refuses everything)."""
    settings = server()
    policy = Policy.for_repo(settings, settings.repositories[REPO])
    text = (
        HEAD + "  - name: t\n    docker_run: {command: [id], network: none, "
        "volumes: ['hp-cache:/c', 'ml_vol:/m:ro'], memory: 2g, pids_limit: 1024, cpus: 2, "
        "user: '1000:1000', env: {PW: '${secrets.REGISTRY_PASSWORD}'}}\n"
        + "  - name: d\n    deploy: {environment: prod}\n"
        + "environments:\n  prod:\n    hosts: [{host: prod.example.com, port: 2222, user: deploy}]\n"
        + "    container: {name: hp, volumes: ['ml_vol:/models:ro'], "
        "env: {DB: '${secrets.PROD_DB_PASSWORD}'}}\n"
    )
    p = load_pipeline(text, variables=VARIABLES, secrets=settings.secrets, policy=policy)
    assert p.step("t").spec.env["PW"] == SERVER_SECRETS["REGISTRY_PASSWORD"]
    assert set(p.secret_values) == {SERVER_SECRETS["REGISTRY_PASSWORD"], SERVER_SECRETS["PROD_DB_PASSWORD"]}


def test_a_listed_secret_in_a_refused_value_is_masked_in_the_error() -> None:
    """Finding 4 at the loader: an allowed secret used where validation fails (a step name) is
    quoted masked, never in clear."""
    settings = server()
    policy = Policy.for_repo(settings, settings.repositories[REPO])
    text = HEAD + "  - name: 'x${secrets.REGISTRY_PASSWORD}'\n    docker_run: {}\n"
    with pytest.raises(PipelineError) as err:
        load_pipeline(text, variables=VARIABLES, secrets=settings.secrets, policy=policy)
    assert "invalid name 'x***'" in str(err.value)
    assert SERVER_SECRETS["REGISTRY_PASSWORD"] not in str(err.value)


def test_server_configuration_cannot_list_a_server_secret_for_a_repository() -> None:
    with pytest.raises(ValueError, match="the server's own secrets are never given to a pipeline"):
        Reach(secrets=("DEPLOY_SSH_KEY",))
    settings = Settings(
        repositories={
            REPO: RepoConfig(full_name=REPO, clone_url="x", reach=Reach(secrets=("OTHER_WEBHOOK_SECRET",))),
            VICTIM: RepoConfig(full_name=VICTIM, clone_url="y", webhook_secrets=("OTHER_WEBHOOK_SECRET",)),
        },
        secrets=Secrets(env=SERVER_SECRETS),
    )
    with pytest.raises(Exception, match="OTHER_WEBHOOK_SECRET, a secret of the server itself"):
        settings.validate()


def test_deploy_step_refuses_a_target_before_connecting() -> None:
    """The deploy step's own check (right before SSH): a pipeline recorded before the configuration
    changed, or loaded without a policy, still cannot reach another repository's host."""
    settings = server()
    p = load_pipeline(env_block(hosts="[{host: victim-prod.example.com}]"))  # no policy: not checked here
    with pytest.raises(
        DeployError, match=r"deploy refused before connecting: root@victim-prod\.example\.com:22"
    ):
        ensure_deploy_targets(settings, REPO, "qa", p.environments["qa"])
    ensure_deploy_targets(settings, VICTIM, "qa", p.environments["qa"])  # the victim's own pipeline may
    assert settings.deploy_key_name(VICTIM) == "OTHER_SSH_KEY"
    assert settings.deploy_key_name(REPO) == "DEPLOY_SSH_KEY"


def test_validate_knows_the_servers_own_secret_names_without_a_configuration(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(run_step("env: {A: '${secrets.GITHUB_TOKEN}', B: '${secrets.MY_TOKEN}'}"))
    cmd = [sys.executable, "-m", "orchestrator", "validate", str(path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 1
    assert "secret 'GITHUB_TOKEN' is one of the server's own secrets" in out.stderr
    assert "MY_TOKEN" not in out.stderr  # unknown without a configuration: accepted here
    out = subprocess.run([*cmd, "--secret", "OTHER"], capture_output=True, text=True, env=env, check=False)
    assert "secret 'MY_TOKEN' is not one this repository may use; allowed here: OTHER" in out.stderr


def test_validate_checks_against_a_repositorys_reach_in_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        repositories:
          {REPO}:
            clone_url: x
            reach: {{secrets: [MY_TOKEN], volumes: [ml_vol], deploy_targets: [{{host: qa.example.com}}]}}
        """)
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(env_block('volumes: ["hp-x:/m"], env: {T: "${secrets.MY_TOKEN}"}', "[{host: other}]"))
    env = {**os.environ, "ORCHESTRATOR_CONFIG": str(config)}
    cmd = [sys.executable, "-m", "orchestrator", "validate", str(path), "--repo", REPO, "--var", "X=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 1, out.stdout
    assert "named volume 'hp-x' is not one this repository may mount (allowed: ml_vol" in out.stderr
    assert "root@other:22 is not a deploy target of this repository" in out.stderr


# -- real builds -------------------------------------------------------------------------------------


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    stand_in = GitHubStandIn().start()
    yield stand_in
    stand_in.stop()


def _run(
    make_settings: Callable[..., Settings],
    store: Any,
    git_origin: GitOrigin,
    pipeline: str,
    files: dict[str, str] | None = None,
    **kw: Any,
) -> tuple[Builds, Build]:
    b = Builds(make_settings(**kw), store, git_origin)
    try:
        return b, b.commit_and_run(pipeline, files)
    finally:
        b.queue.connection.close()


@pytest.mark.docker
def test_a_secret_in_a_step_name_is_masked_in_build_error_api_page_and_commit_status(
    make_settings: Callable[..., Settings], store: Any, git_origin: GitOrigin, github: GitHubStandIn
) -> None:
    """Finding 4 on the real path: the error of a pipeline that quotes a secret is stored, served
    and reported to GitHub masked (today: the token in clear in all three)."""
    from orchestrator import create_app

    secret = "GHS_" + uuid.uuid4().hex.upper()  # not a valid step name: the load fails
    pipeline = small_pipeline(
        BUILD_STEP + "- name: 'x-${secrets.REPO_TOKEN}'\n  docker_run: {command: [id]}\n"
    )
    _, build = _run(
        make_settings,
        store,
        git_origin,
        pipeline,
        secrets={"REPO_TOKEN": secret, "GITHUB_TOKEN": "ghs-status-token"},
        github_api_url=github.url,
    )
    assert build.status is BuildStatus.FAILED
    assert "invalid name 'x-***'" in build.error and secret not in build.error
    client = create_app(make_settings(secrets={"REPO_TOKEN": secret})).test_client()
    api = client.get(f"/api/v1/builds/{build.id}").get_data(as_text=True)
    page = client.get(f"/builds/{build.id}").get_data(as_text=True)
    statuses = json.dumps([c.body for c in github.calls])
    assert github.calls and "x-***" in statuses
    for where, text in (("api", api), ("page", page), ("commit status", statuses)):
        assert secret not in text and base64.b64encode(secret.encode()).decode() not in text, where


@pytest.mark.docker
def test_build_container_has_memory_pids_and_no_new_privileges(
    make_settings: Callable[..., Settings],
    store: Any,
    git_origin: GitOrigin,
    docker_client: Any,
    base_image: str,
) -> None:
    """A real docker_run container: the kernel sees the server's default limits (cgroup files,
    NoNewPrivs), and ``docker inspect`` of a container created from the same request shows them."""
    reach = Reach(limits=ContainerLimits(memory="300m", pids=128))
    cmd = (  # cgroup v2 files, else v1's
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; "
        "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max; "
        "grep NoNewPrivs /proc/self/status"
    )
    pipeline = small_pipeline(BUILD_STEP + f"- name: look\n  docker_run: {{command: [sh, -c, '{cmd}']}}\n")
    _, build = _run(make_settings, store, git_origin, pipeline, reach=reach)
    assert build.status is BuildStatus.SUCCESS, build.error
    log = store.log_text(build.id)
    assert str(300 * 1024 * 1024) in log and re.search(r"\b128\b", log), log
    assert re.search(r"NoNewPrivs:\s+1", log), log
    spec = load_pipeline(pipeline, variables={"REGISTRY": "r", "BASE_IMAGE": base_image}).step("look").spec
    kwargs = run_request(spec, base_image, {"mlship.test": uuid.uuid4().hex}, limits=reach.limits).kwargs()
    container = docker_client.containers.create(**kwargs)
    try:
        host = docker_client.api.inspect_container(container.id)["HostConfig"]
        assert host["Memory"] == 300 * 1024 * 1024
        assert host["PidsLimit"] == 128
        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert host["Privileged"] is False and host["NetworkMode"] in ("default", "bridge")
    finally:
        container.remove(force=True)


@pytest.mark.docker
def test_a_symlinked_build_context_cannot_send_the_workers_files(
    make_settings: Callable[..., Settings], store: Any, git_origin: GitOrigin
) -> None:
    """A context (or Dockerfile) that is a symlink out of the checkout is refused before the daemon
    gets a byte: otherwise `context: evil` with evil -> / would put the worker's disk in the image."""
    link = Path(git_origin.work) / "evil"
    link.symlink_to("/etc")
    pipeline = small_pipeline("- name: build\n  docker_build: {context: evil, dockerfile: hostname}\n")
    _, build = _run(make_settings, store, git_origin, pipeline)
    assert build.status is BuildStatus.FAILED
    assert "build context 'evil' is a symlink that leads out of the repository" in build.error
    link.unlink()
    (Path(git_origin.work) / "small").mkdir(exist_ok=True)
    df = Path(git_origin.work) / "small" / "Dockerfile.evil"
    df.symlink_to("/etc/hostname")
    pipeline = small_pipeline(
        "- name: build\n  docker_build: {context: small, dockerfile: Dockerfile.evil}\n"
    )
    _, build = _run(make_settings, store, git_origin, pipeline)
    assert "Dockerfile 'small/Dockerfile.evil' is a symlink that leads out of the repository" in build.error


def test_policy_without_a_repository_is_closed() -> None:
    """A repository with no reach configured reaches nothing: no secret, volume, extra network or host."""
    policy = Policy.for_repo(Settings(), RepoConfig(full_name=REPO, clone_url="x"))
    assert policy.secret_refusal("ANY", ("steps", 0)) is not None
    assert policy.volume_problem("cache:/c") is not None
    assert policy.network_problem("bridge") is None and policy.network_problem("mynet") is not None
    assert "allowed: none" in (policy.target_problem("qa", "h", 22, "u") or "")
    assert Policy(allow=Allow(host_mounts=True)).volume_problem("/srv/data:/d") is None


def test_the_example_configuration_gives_the_example_pipeline_exactly_what_it_needs() -> None:
    """deploy/config.example.yaml (what compose mounts) admits the repository's own pipeline.yaml and
    nothing of another host."""
    from orchestrator.config import load_settings

    root = Path(__file__).resolve().parents[2]
    settings = load_settings(
        {"ORCHESTRATOR_CONFIG": str(root / "deploy/config.example.yaml")}, validate=False
    )
    repo = settings.repositories[REPO]
    policy = Policy.for_repo(settings, repo)
    variables = {"BUILD_NUMBER": "1", "GIT_SHA_SHORT": "abc1234", **settings.pipeline_vars(repo)}
    text = (root / "pipeline.yaml").read_text()
    assert load_pipeline(text, variables=variables, policy=policy).environments["prod"]
    with pytest.raises(PipelineError, match=r"root@prod\.example\.com:22 is not a deploy target"):
        load_pipeline(text, variables={**variables, "QA_HOST": "prod.example.com"}, policy=policy)
