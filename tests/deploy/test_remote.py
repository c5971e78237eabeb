"""The docker argv builders: exact argv, hostile values stay single words, and the pure deploy rules."""

from __future__ import annotations

import shlex

import pytest

from orchestrator.deploy import commands as remote
from orchestrator.deploy.plan import deploy_ref
from orchestrator.deploy.policy import images_to_keep, images_to_prune, rollback_target, superseded_by
from orchestrator.errors import DeployError
from orchestrator.models import Deployment

HOSTILE = [
    "$(reboot)",
    "`id`",
    "a b",
    "'quoted'",
    '"dq"',
    "x;rm -rf /",
    "--privileged",
    "-v/:/h",
    "a\nb",
    "${HOME}",
    "*",
    "ünï",
    "",
]


def _app(**kw: object) -> remote.AppContainer:
    base: dict[str, object] = {"name": "hp-b7", "image": "reg:5000/hp@sha256:ab", "network": "hp-net"}
    base.update(kw)
    return remote.AppContainer(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "argv,expected",
    [
        (remote.pull("reg:5000/hp:7"), ["docker", "pull", "--quiet", "--", "reg:5000/hp:7"]),
        (
            remote.pull("r/hp:7", config="/dev/shm/c"),
            ["docker", "--config", "/dev/shm/c", "pull", "--quiet", "--", "r/hp:7"],
        ),
        (
            remote.login("reg:5000", "ci", "/dev/shm/c"),
            [
                "docker",
                "--config",
                "/dev/shm/c",
                "login",
                "--username",
                "ci",
                "--password-stdin",
                "--",
                "reg:5000",
            ],
        ),
        (
            remote.network_exists("hp-net"),
            ["docker", "network", "inspect", "--format", "{{.Name}}", "--", "hp-net"],
        ),
        (
            remote.network_create("hp-net"),
            [
                "docker",
                "network",
                "create",
                "--driver",
                "bridge",
                "--label",
                "mlship.managed=1",
                "--",
                "hp-net",
            ],
        ),
        (
            remote.run(_app()),
            [
                "docker",
                "run",
                "--detach",
                "--name",
                "hp-b7",
                "--network",
                "hp-net",
                "--restart",
                "unless-stopped",
                "--",
                "reg:5000/hp@sha256:ab",
            ],
        ),
        (
            remote.run(
                _app(
                    env={"A": "1"},
                    labels={"l.k": "v"},
                    volumes=["ml_vol:/models:ro"],
                    memory="1g",
                    cpus=1.5,
                    network_alias="hp",
                )
            ),
            [
                "docker",
                "run",
                "--detach",
                "--name",
                "hp-b7",
                "--network",
                "hp-net",
                "--restart",
                "unless-stopped",
                "--network-alias",
                "hp",
                "--label",
                "l.k=v",
                "--env",
                "A=1",
                "--volume",
                "ml_vol:/models:ro",
                "--memory",
                "1g",
                "--cpus",
                "1.5",
                "--",
                "reg:5000/hp@sha256:ab",
            ],
        ),
        (
            remote.create_edge(
                remote.EdgeContainer(
                    "hp-edge",
                    "reg/mlship-edge:t",
                    "hp-net",
                    "hp-edge-state",
                    8500,
                    5000,
                    {"mlship.role": "edge"},
                )
            ),
            [
                "docker",
                "create",
                "--name",
                "hp-edge",
                "--network",
                "hp-net",
                "--restart",
                "unless-stopped",
                "--publish",
                "8500:5000",
                "--volume",
                "hp-edge-state:/state",
                "--label",
                "mlship.role=edge",
                "--",
                "reg/mlship-edge:t",
                "serve",
            ],
        ),
        (
            remote.edge_admin("hp-edge"),
            ["docker", "exec", "--interactive", "hp-edge", "socat", "stdio", "/run/haproxy/admin.sock"],
        ),
        (
            remote.rewrite_edge_config("hp-edge"),
            ["docker", "exec", "--interactive", "hp-edge", "mlship-edge", "write-config"],
        ),
        (
            remote.write_edge_config("hp-edge-state", "reg/mlship-edge:t"),
            [
                "docker",
                "run",
                "--interactive",
                "--rm",
                "--network",
                "none",
                "--label",
                "mlship.role=edge-config",
                "--volume",
                "hp-edge-state:/state",
                "--",
                "reg/mlship-edge:t",
                "write-config",
            ],
        ),
        (
            remote.take_over_edge("hp-edge", "hp-edge-new"),
            ["sh", "-c", remote.TAKEOVER_SCRIPT, "mlship-edge-takeover", "hp-edge", "hp-edge-new"],
        ),
        (remote.legacy_upstream("hp-edge"), ["docker", "exec", "hp-edge", "cat", "/state/upstream"]),
        (
            remote.container_ip("hp-b7", "hp-net"),
            [
                "docker",
                "container",
                "inspect",
                "--format",
                '{{with index .NetworkSettings.Networks "hp-net"}}{{.IPAddress}}{{end}}',
                "--",
                "hp-b7",
            ],
        ),
        (
            remote.container_label("hp-edge", "mlship.edge-version"),
            [
                "docker",
                "container",
                "inspect",
                "--format",
                '{{index .Config.Labels "mlship.edge-version"}}',
                "--",
                "hp-edge",
            ],
        ),
        (remote.start("hp-edge"), ["docker", "start", "--", "hp-edge"]),
        (
            remote.upload_model(
                "reg/mlship-edge:t",
                "ml_vol",
                "/models",
                "a" * 16,
                [remote.UploadFile("model.skops", 3, "b" * 64)],
            ),
            [
                "docker",
                "run",
                "--interactive",
                "--rm",
                "--user",
                "0",
                "--network",
                "none",
                "--label",
                "mlship.role=model-upload",
                "--volume",
                "ml_vol:/models",
                "--",
                "reg/mlship-edge:t",
                "store-model",
                "/models/" + "a" * 16,
                "model.skops",
                "b" * 64,
            ],
        ),
        (remote.stop("hp-b6", 10), ["docker", "stop", "--time", "10", "--", "hp-b6"]),
        (remote.rm("hp-b6"), ["docker", "rm", "--force", "--volumes", "--", "hp-b6"]),
        (remote.image_rm("r/hp:1"), ["docker", "image", "rm", "--", "r/hp:1"]),
        (remote.logs("hp-b7", 50), ["docker", "logs", "--tail", "50", "--", "hp-b7"]),
        (
            remote.list_app_containers("hp"),
            [
                "docker",
                "ps",
                "--all",
                "--no-trunc",
                "--filter",
                "label=mlship.app=hp",
                "--filter",
                "label=mlship.role=app",
                "--format",
                "{{.Names}}",
            ],
        ),
    ],
)
def test_exact_argv(argv: list[str], expected: list[str]) -> None:
    assert argv == expected


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_env_and_label_values_stay_one_word(value: str) -> None:
    argv = remote.run(_app(env={"V": value}, labels={"org.x": value}))
    assert argv[argv.index("--env") + 1] == f"V={value}"
    assert argv[argv.index("--label") + 1] == f"org.x={value}"
    assert shlex.split(shlex.join(argv)) == argv  # what the remote shell parses is exactly the argv
    assert argv[-2:] == ["--", "reg:5000/hp@sha256:ab"]


@pytest.mark.parametrize("image", ["-rf", "--help", "$(id)", "a b"])
def test_hostile_image_refs_are_positional(image: str) -> None:
    for argv in (remote.pull(image), remote.image_rm(image)):
        assert argv[-2:] == ["--", image]
        assert shlex.split(shlex.join(argv)) == argv


@pytest.mark.parametrize("key", ["A=B", "", "1X", "a b", "$(x)", "-e"])
def test_bad_env_keys_are_refused(key: str) -> None:
    with pytest.raises(DeployError, match="not allowed"):
        remote.run(_app(env={key: "v"}))


@pytest.mark.parametrize("network", ['x"}}{{.Config.Env', "a b", "-n", ""])
def test_template_values_are_checked(network: str) -> None:
    with pytest.raises(DeployError, match="not allowed"):
        remote.container_ip("hp-b7", network)
    with pytest.raises(DeployError, match="not allowed"):
        remote.container_label("hp-b7", network)


def test_our_labels_come_after_user_labels() -> None:
    argv = remote.run(_app(labels={"mlship.role": "edge"}))
    assert argv.count("--label") == 1  # the caller merges ours last; the builder keeps dict order


@pytest.mark.parametrize(
    "image,registry",
    [
        ("127.0.0.1:5000/hp:1", "127.0.0.1:5000"),
        ("ghcr.io/acme/hp:1", "ghcr.io"),
        ("localhost/hp", "localhost"),
        ("acme/hp:1", "docker.io"),
        ("hp", "docker.io"),
    ],
)
def test_registry_of(image: str, registry: str) -> None:
    assert remote.registry_of(image) == registry


def test_kill_group_refuses_init_and_quotes_pid() -> None:
    with pytest.raises(ValueError):
        remote.kill_group(1)
    argv = remote.kill_group(4242)
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["4242", "1"]


@pytest.mark.parametrize(
    "image,digest,expected",
    [
        ("r:5000/hp:7", "sha256:ab", "r:5000/hp@sha256:ab"),
        ("r:5000/hp:7", "", "r:5000/hp:7"),
        ("r:5000/hp@sha256:ab", "sha256:ab", "r:5000/hp@sha256:ab"),
        ("hp", "sha256:ab", "hp@sha256:ab"),
    ],
)
def test_deploy_ref(image: str, digest: str, expected: str) -> None:
    assert deploy_ref(image, digest) == expected


def _dep(n: int, action: str = "deploy") -> Deployment:
    return Deployment(
        repo="r", environment="qa", build_id=100 + n, build_number=n, image=f"img:{n}", sha="s", action=action
    )


@pytest.mark.parametrize(
    "current,number,action,expected",
    [
        (None, 1, "deploy", None),
        (2, 1, "deploy", 2),
        (2, 1, "promote", 2),
        (2, 1, "rollback", None),
        (2, 2, "deploy", None),
        (2, 3, "deploy", None),
    ],
)
def test_superseded_by(current: int | None, number: int, action: str, expected: int | None) -> None:
    dep = _dep(current) if current else None
    got = superseded_by(dep, number, action)
    assert (got.build_number if got else None) == expected


@pytest.mark.parametrize(
    "history,current,to_build,expected",
    [
        ([3, 2, 1], 3, None, 2),
        ([1, 3, 2, 1], 1, None, None),  # after rolling back to 1 there is nothing older
        ([2, 3, 2, 1], 2, None, 1),
        ([3, 2, 1], 3, 101, 1),
        ([3], 3, None, None),
        ([], None, None, None),
    ],
)
def test_rollback_target(
    history: list[int], current: int | None, to_build: int | None, expected: int | None
) -> None:
    target = rollback_target([_dep(n) for n in history], _dep(current) if current else None, to_build)
    assert (target.build_number if target else None) == expected


def test_prune_never_touches_current_or_rollback_target() -> None:
    history = [_dep(n) for n in (5, 4, 3, 2, 1)]  # 5 is current before deploying 6
    keep = images_to_keep(history, "img:6", keep=3)
    assert {"img:6", "img:5", "img:4"} <= keep
    prune = images_to_prune(history, "img:6", keep=3)
    assert "img:5" not in prune and "img:6" not in prune and "img:1" in prune
    assert set(prune).isdisjoint(keep)
