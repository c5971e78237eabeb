"""pipeline.yaml parsing: a table of invalid pipelines with their exact messages, and valid ones."""

# ruff: noqa: E501  (the exact messages read best unbroken)

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config import Allow, Secrets
from orchestrator.errors import PipelineError
from orchestrator.models import Build
from orchestrator.pipeline import (
    ContainerSpec,
    DeploySpec,
    DockerBuildSpec,
    build_variables,
    load_pipeline,
)

ROOT = Path(__file__).resolve().parents[2]
HEAD = "version: 1\nname: app\nimage: reg/app\n"
B = "steps:\n  - name: build\n    docker_build: {}\n"
BOMB = "".join(
    f"{n}: &{n} [" + ",".join([f"*{p}"] * 9 if p else ["x"] * 9) + "]\n"
    for n, p in zip("abcde", ["", "a", "b", "c", "d"], strict=True)
)

CASES = {
    "unknown_key": HEAD + B + "  - name: test\n    docker_run: {comand: [pytest]}\n",
    "unknown_top": HEAD + "stepz: []\n" + B,
    "missing_steps": HEAD,
    "empty_steps": HEAD + "steps: []\n",
    "dup_names": HEAD + B + "  - name: build\n    docker_run: {command: [x]}\n",
    "two_kinds": HEAD + "steps:\n  - name: both\n    docker_build: {}\n    docker_run: {command: [x]}\n",
    "unknown_kind": HEAD + "steps:\n  - name: tf\n    terraform: {apply: true}\n",
    "no_kind": HEAD + "steps:\n  - name: nothing\n    timeout: 5\n",
    "bad_timeout": HEAD + "steps:\n  - name: build\n    docker_build: {}\n    timeout: -5\n",
    "bad_timeout_str": HEAD + "steps:\n  - name: build\n    docker_build: {}\n    timeout: soon\n",
    "unknown_env": HEAD + B + "  - name: d\n    deploy: {environment: staging}\n",
    "privileged": HEAD + B + "  - name: t\n    docker_run: {command: [x], privileged: true}\n",
    "host_network": HEAD + B + "  - name: t\n    docker_run: {command: [x], network: host}\n",
    "docker_sock": HEAD
    + B
    + "  - name: t\n    docker_run: {command: [x], volumes: ['/var/run/docker.sock:/var/run/docker.sock']}\n",
    "host_path": HEAD + B + "  - name: t\n    docker_run: {command: [x], volumes: ['/etc:/host-etc:ro']}\n",
    "python_tag": HEAD + "steps: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
    "yaml_bomb": BOMB,
    "too_large": HEAD + B + "# " + "x" * 300_000 + "\n",
    "deep": HEAD + B + "extra: " + "[" * 40 + "]" * 40 + "\n",
    "bad_version": "version: 2\nname: app\nimage: reg/app\n" + B,
    "undefined_var": HEAD.replace("reg/app", '"${REGISTRY}/app"') + B,
    "bad_var_syntax": HEAD.replace("reg/app", '"${REG-ISTRY}/app"') + B,
    "bad_name": HEAD + "steps:\n  - name: Build Step\n    docker_build: {}\n",
    "shell_not_allowed": HEAD + "steps:\n  - name: sh\n    shell: {command: [make]}\n",
    "dup_key": HEAD + B + "name: again\n",
    "not_mapping": "- just\n- a list\n",
    "invalid_yaml": HEAD + "steps: [\n",
    "push_before_build": HEAD + "steps:\n  - name: push\n    docker_push: {}\n",
    "context_escape": HEAD + "steps:\n  - name: build\n    docker_build: {context: ../..}\n",
    "missing_secret": HEAD
    + B
    + "  - name: push\n    docker_push: {auth: {username: ci, password: '${secrets.NOPE}'}}\n",
    "env_missing_container": HEAD + B + "environments:\n  qa:\n    hosts: [{host: h}]\n",
    "port_not_int": HEAD
    + B
    + "environments:\n  qa:\n    hosts: [{host: h, port: twenty}]\n    container: {name: c}\n",
    "recursive_alias": "a: &a [*a]\n",
}

EXPECTED = [
    (
        "unknown_key",
        "pipeline.yaml:8: steps[1].docker_run.comand: unknown key 'comand' (did you mean 'command'?); allowed: command, image, env, workdir, user, network, volumes, privileged, memory, cpus, pids_limit, artifacts",
    ),
    (
        "unknown_top",
        "pipeline.yaml:4: stepz: unknown key 'stepz' (did you mean 'steps'?); allowed: version, name, image, timeout, steps, environments",
    ),
    ("missing_steps", "pipeline.yaml:1: steps: missing required key 'steps'"),
    ("empty_steps", "pipeline.yaml:4: steps: must not be empty"),
    (
        "dup_names",
        "pipeline.yaml:7: steps[1].name: duplicate step name 'build' (also steps[0]); names must be unique",
    ),
    (
        "two_kinds",
        "pipeline.yaml:5: steps[0]: step 'both' has 2 kinds (docker_build, docker_run); a step does exactly one thing: split it into several steps",
    ),
    (
        "unknown_kind",
        "pipeline.yaml:6: steps[0].terraform: unknown key 'terraform'; a step has name, timeout, continue_on_error, when and one kind of: docker_build, docker_run, docker_push, deploy, rollback, shell, model_check",
    ),
    (
        "no_kind",
        "pipeline.yaml:5: steps[0]: step 'nothing' has no kind: add exactly one of docker_build, docker_run, docker_push, deploy, rollback, shell, model_check",
    ),
    (
        "bad_timeout",
        "pipeline.yaml:7: steps[0].timeout: must be a number of seconds greater than 0 (at most 604800), got -5",
    ),
    (
        "bad_timeout_str",
        "pipeline.yaml:7: steps[0].timeout: must be a number of seconds greater than 0 (at most 604800), got 'soon'",
    ),
    (
        "unknown_env",
        "pipeline.yaml:8: steps[1].deploy.environment: unknown environment 'staging'; environments: none defined",
    ),
    (
        "privileged",
        "pipeline.yaml:8: steps[1].docker_run.privileged: privileged containers are not allowed for this repository (server configuration: allow.privileged: true)",
    ),
    (
        "host_network",
        "pipeline.yaml:8: steps[1].docker_run.network: network: host is not allowed for this repository (server configuration: allow.host_network: true); use one of: none, bridge",
    ),
    (
        "docker_sock",
        "pipeline.yaml:8: steps[1].docker_run.volumes[0]: mounting the Docker socket (/var/run/docker.sock) gives the build root on the worker; refused (server configuration: allow.host_mounts: true)",
    ),
    (
        "host_path",
        "pipeline.yaml:8: steps[1].docker_run.volumes[0]: host path mount '/etc' is not allowed for this repository; use a named volume (name:/path) or set allow.host_mounts: true in the server configuration",
    ),
    (
        "python_tag",
        "pipeline.yaml:4: tag '!!python/object/apply:os.system' is not allowed: pipeline.yaml holds plain data (strings, numbers, booleans, lists, mappings)",
    ),
    (
        "yaml_bomb",
        "pipeline.yaml:1: aliases expand the document to more than 20000 nodes; refused as a YAML bomb",
    ),
    (
        "too_large",
        "pipeline.yaml: file is larger than the limit of 262144 bytes (300083 bytes read); a "
        "pipeline needs far less: keep data and scripts in other files",
    ),
    ("deep", "pipeline.yaml:7: nested deeper than 32 levels; a pipeline needs far fewer"),
    ("bad_version", "pipeline.yaml:1: version: unsupported version 2; this server reads version: 1"),
    (
        "undefined_var",
        "pipeline.yaml:3: image: undefined variable ${REGISTRY}; defined: BUILD_NUMBER (server variables come from the server configuration's vars)",
    ),
    (
        "bad_var_syntax",
        "pipeline.yaml:3: image: '${REG-ISTRY}' is not a variable reference: write ${NAME} or ${secrets.NAME} (letters, digits, _), or $${ for a literal ${",
    ),
    (
        "bad_name",
        "pipeline.yaml:5: steps[0].name: invalid name 'Build Step': use lowercase letters, digits, '-' and '_' (at most 63, starting with a letter or digit)",
    ),
    (
        "shell_not_allowed",
        "pipeline.yaml:6: steps[0].shell: step 'sh': shell steps run on the worker itself and are not allowed for this repository (server configuration: allow.shell: true)",
    ),
    ("dup_key", "pipeline.yaml:7: name: duplicate key 'name' (a mapping may name each key once)"),
    ("not_mapping", "pipeline.yaml:1: the top level must be a mapping with version, name, image and steps"),
    ("invalid_yaml", "pipeline.yaml:5: invalid YAML: expected the node content, but found '<stream end>'"),
    (
        "push_before_build",
        "pipeline.yaml:6: steps[0].docker_push: step 'push' pushes the image built by an earlier docker_build step, but none comes before it",
    ),
    (
        "context_escape",
        "pipeline.yaml:6: steps[0].docker_build.context: context must be a path inside the repository (relative, no '..'), got '../..'",
    ),
    (
        "missing_secret",
        "pipeline.yaml:8: steps[1].docker_push.auth.password: secret 'NOPE' is not set on the server: export NOPE=... for the worker or put a file of that name in its secrets directory",
    ),
    ("env_missing_container", "pipeline.yaml:9: environments.qa.container: missing required key 'container'"),
    (
        "port_not_int",
        "pipeline.yaml:9: environments.qa.hosts[0].port: must be an integer or a ${VAR} that holds one",
    ),
    ("recursive_alias", "pipeline.yaml:1: an alias refers to itself (recursive structure); refused"),
]


def _load(case: str) -> None:
    kw: dict = {}
    if case in ("undefined_var", "bad_var_syntax"):
        kw["variables"] = {"BUILD_NUMBER": "1"}
    if case == "missing_secret":
        kw["secrets"] = Secrets()
    load_pipeline(CASES[case], **kw)


@pytest.mark.parametrize(("case", "message"), EXPECTED, ids=[c for c, _ in EXPECTED])
def test_invalid_pipeline_exact_message(case: str, message: str) -> None:
    with pytest.raises(PipelineError) as err:
        _load(case)
    assert str(err.value) == message
    assert err.value.context["file"] == "pipeline.yaml"


def test_table_covers_every_case() -> None:
    assert {c for c, _ in EXPECTED} == set(CASES)
    assert len(EXPECTED) >= 15


def test_python_tag_never_executes(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = HEAD + f"steps: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(PipelineError):
        load_pipeline(text)
    assert not marker.exists()


def test_yaml_bomb_is_refused_fast() -> None:
    bomb = "".join(
        f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10 if i else ["lol"] * 10) + "]\n" for i in range(10)
    )
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match="YAML bomb"):
        load_pipeline(bomb)
    assert time.monotonic() - t0 < 1


def test_every_error_is_reported_with_its_line() -> None:
    text = (
        HEAD + "steps:\n  - name: a\n    docker_build: {contxt: .}\n  - name: b\n    docker_run: {cmd: [x]}\n"
    )
    with pytest.raises(PipelineError) as err:
        load_pipeline(text)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("pipeline.yaml:6: steps[0].docker_build.contxt: unknown key 'contxt'")
    assert lines[1].startswith("pipeline.yaml:8: steps[1].docker_run.cmd: unknown key 'cmd'")
    assert err.value.context["line"] == 6 and err.value.context["key"] == "steps[0].docker_build.contxt"


def test_root_pipeline_is_valid_and_resolves() -> None:
    text = (ROOT / "pipeline.yaml").read_text()
    assert load_pipeline(text).name == "house-price-model"
    build = Build(
        id=7,
        number=3,
        repo="acme/house-price",
        sha="ab" * 20,
        ref="refs/heads/main",
        branch="main",
        trigger="push",
    )
    server = {
        "REGISTRY": "127.0.0.1:5000",
        "BASE_IMAGE": "python:3.11-slim",
        "QA_HOST": "127.0.0.1",
        "QA_PORT": "2201",
        "PROD_HOST": "127.0.0.1",
        "PROD_PORT": "2202",
    }
    p = load_pipeline(text, variables=build_variables(build, server), secrets=Secrets())
    assert p.image == "127.0.0.1:5000/house-price"
    assert [(s.name, s.kind) for s in p.steps] == [
        ("build", "docker_build"),
        ("test", "docker_run"),
        ("train", "docker_run"),
        ("push", "docker_push"),
        ("deploy-qa", "deploy"),
        ("gate", "model_check"),
        ("deploy-prod", "deploy"),
    ]
    build_spec = p.step("build").spec
    assert isinstance(build_spec, DockerBuildSpec)
    assert build_spec.tags == ["3", "ababab" + "a"] and build_spec.build_args == {
        "BASE_IMAGE": "python:3.11-slim"
    }
    assert p.step("deploy-prod").spec == DeploySpec(environment="prod", promote="auto")
    assert p.step("deploy-prod").runs_on("main") and not p.step("deploy-prod").runs_on("feature")
    qa, prod = p.environments["qa"], p.environments["prod"]
    assert qa.hosts[0].port == 2201 and prod.hosts[0].port == 2202
    assert isinstance(qa.container, ContainerSpec)
    assert qa.container.name != prod.container.name and qa.container.publish != prod.container.publish


def test_secrets_are_substituted_and_collected() -> None:
    text = (
        HEAD + B + "  - name: push\n    docker_push: {auth: {username: ci, password: '${secrets.REG_PW}'}}\n"
    )
    p = load_pipeline(text, variables={}, secrets=Secrets(env={"REG_PW": "hunter22"}))
    assert p.step("push").spec.auth.password == "hunter22"
    assert p.secret_values == ("hunter22",)


def test_escaped_dollar_and_unresolved_in_validate_mode() -> None:
    text = (
        HEAD + "steps:\n  - name: t\n    docker_run: {image: x, command: [echo, '$${HOME}', '${BRANCH}']}\n"
    )
    assert load_pipeline(text).step("t").spec.command == ["echo", "${HOME}", "${BRANCH}"]
    resolved = load_pipeline(text, variables={"BRANCH": "main"})
    assert resolved.step("t").spec.command == ["echo", "${HOME}", "main"]


@pytest.mark.parametrize(
    ("allow", "snippet"),
    [
        (Allow(privileged=True), "privileged: true"),
        (Allow(host_network=True), "network: host"),
        (Allow(host_mounts=True), "volumes: ['/var/run/docker.sock:/var/run/docker.sock']"),
        (Allow(host_mounts=True), "volumes: ['/data:/data']"),
    ],
)
def test_permissions_allow_what_they_name(allow: Allow, snippet: str) -> None:
    text = HEAD + B + f"  - name: t\n    docker_run: {{command: [x], {snippet}}}\n"
    with pytest.raises(PipelineError):
        load_pipeline(text)
    load_pipeline(text, allow=allow)


def test_named_volume_is_fine() -> None:
    load_pipeline(HEAD + B + "  - name: t\n    docker_run: {command: [x], volumes: ['cache:/root/.cache']}\n")


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text((ROOT / "pipeline.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(CASES["unknown_key"])
    ok = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and "ok: house-price-model, 7 steps" in ok.stdout
    ko = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ko.returncode == 1
    assert f"{bad}:8: steps[1].docker_run.comand: unknown key 'comand' (did you mean 'command'?)" in ko.stderr
    shell = tmp_path / "shell.yaml"
    shell.write_text(CASES["shell_not_allowed"])
    args = [sys.executable, "-m", "orchestrator", "validate", str(shell)]
    assert subprocess.run(args, capture_output=True, check=False).returncode == 1
    assert subprocess.run([*args, "--allow", "shell"], capture_output=True, check=False).returncode == 0


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "ten_megabytes",
            "version: 1\nname: x\n# " + "a" * 10_000_000 + "\n",
            "file is larger than the limit of 262144 bytes",
        ),
        (
            "brackets_100k_deep",
            "version: 1\nname: " + "[" * 100_000 + "]" * 100_000 + "\n",
            "nested deeper than 32 levels",
        ),
        ("set_tag", "version: 1\nname: !!set {a, b}\nsteps: []\n", "tag '!!set' is not allowed"),
        ("custom_tag", "version: 1\nname: !mytag x\nsteps: []\n", "tag '!mytag' is not allowed"),
        (
            "python_object",
            "version: 1\nname: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
            "is not allowed",
        ),
    ],
)
def test_hostile_files_are_refused_quickly_with_a_clear_message(name, text, message, tmp_path):
    """Through the CLI, as an operator would check a file: refused, never executed, never recursing."""
    f = tmp_path / "pipeline.yaml"
    f.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1, out.stdout
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
