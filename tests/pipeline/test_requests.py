"""Requests as data: the exact Docker SDK kwargs, shell and git argv, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.build.workspace import checkout_commands, fallback_fetch, validate_sha
from orchestrator.config import ContainerLimits
from orchestrator.errors import PayloadError
from orchestrator.pipeline import DockerBuildSpec, DockerPushSpec, DockerRunSpec, RegistryAuth, ShellSpec
from orchestrator.steps.docker import (
    BuildRequest,
    PushRequest,
    build_request,
    push_requests,
    run_request,
    split_ref,
)
from orchestrator.steps.shell import shell_request

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_build_request_kwargs() -> None:
    spec = DockerBuildSpec(
        context="app",
        dockerfile="Dockerfile.prod",
        build_args={"BASE_IMAGE": "py"},
        tags=["12", "abc1234"],
        target="runtime",
    )
    req = build_request(spec, "reg:5000/house", Path("/ws/7"), {"l": "v"}, 100.0, {"BUILD_NUMBER": "12"})
    assert req == BuildRequest(
        path="/ws/7/app",
        dockerfile="Dockerfile.prod",
        tags=("reg:5000/house:12", "reg:5000/house:abc1234"),
        buildargs={"BASE_IMAGE": "py"},
        labels={"l": "v"},
        target="runtime",
        timeout=130,
    )
    assert req.kwargs() == {
        "path": "/ws/7/app",
        "dockerfile": "Dockerfile.prod",
        "tag": "reg:5000/house:12",
        "buildargs": {"BASE_IMAGE": "py"},
        "labels": {"l": "v"},
        "pull": False,
        "nocache": False,
        "rm": True,
        "forcerm": True,
        "decode": True,
        "timeout": 130,
        "target": "runtime",
    }


def test_build_default_tag_is_the_build_number() -> None:
    req = build_request(DockerBuildSpec(), "img", Path("/ws"), {}, 10, {"BUILD_NUMBER": "5"})
    assert req.tags == ("img:5",) and req.path == "/ws"


def test_run_request_kwargs() -> None:
    spec = DockerRunSpec(
        command=["python3", "-m", "pytest"],
        env={"A": "1"},
        workdir="/app",
        memory="512m",
        cpus=1.5,
        volumes=["cache:/c"],
    )
    assert run_request(spec, "img:5", {"mlship.build": "9"}).kwargs() == {
        "image": "img:5",
        "command": ["python3", "-m", "pytest"],
        "environment": {"A": "1"},
        "labels": {"mlship.build": "9"},
        "detach": True,
        "privileged": False,
        "working_dir": "/app",
        "mem_limit": "512m",
        "nano_cpus": 1_500_000_000,
        "pids_limit": 512,
        "volumes": ["cache:/c"],
        "security_opt": ["no-new-privileges:true"],
    }
    assert run_request(DockerRunSpec(image="other:1"), "img:5", {}).kwargs()["image"] == "other:1"


def test_run_request_limits_default_to_the_repositorys_and_always_forbid_new_privileges() -> None:
    """Issue 18: a build container without limits of its own gets the server's memory and pids
    limits and no-new-privileges; its own values (checked against the maxima at load) win."""
    limits = ContainerLimits(memory="1g", pids=256)
    kw = run_request(DockerRunSpec(command=["x"]), "img:5", {}, limits=limits).kwargs()
    assert (kw["mem_limit"], kw["pids_limit"], kw["security_opt"]) == ("1g", 256, ["no-new-privileges:true"])
    own = run_request(DockerRunSpec(memory="300m", pids_limit=64), "img:5", {}, limits=limits).kwargs()
    assert (own["mem_limit"], own["pids_limit"]) == ("300m", 64)
    build = build_request(DockerBuildSpec(), "img", Path("/ws"), {}, 10, {}, limits).kwargs()
    assert build["container_limits"] == {"memory": 1024**3}


def test_push_requests_kwargs() -> None:
    spec = DockerPushSpec(tags=["5", "latest"], auth=RegistryAuth(username="ci", password="pw"))
    reqs = push_requests(spec, "reg:5000/house", {"BUILD_NUMBER": "5"})
    assert reqs == [
        PushRequest("reg:5000/house", "5", {"username": "ci", "password": "pw"}),
        PushRequest("reg:5000/house", "latest", {"username": "ci", "password": "pw"}),
    ]
    assert reqs[0].kwargs() == {
        "repository": "reg:5000/house",
        "tag": "5",
        "stream": True,
        "decode": True,
        "auth_config": {"username": "ci", "password": "pw"},
    }
    assert PushRequest("r", "t").kwargs() == {"repository": "r", "tag": "t", "stream": True, "decode": True}


@pytest.mark.parametrize(
    ("ref", "parts"),
    [
        ("reg:5000/a/b:7", ("reg:5000/a/b", "7")),
        ("reg:5000/a", ("reg:5000/a", "latest")),
        ("a:1", ("a", "1")),
    ],
)
def test_split_ref(ref: str, parts: tuple[str, str]) -> None:
    assert split_ref(ref) == parts


def test_shell_request_has_argv_own_group_and_no_worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "should-not-leak")
    req = shell_request(
        ShellSpec(command=["make", "test"], env={"X": "1"}, workdir="sub"), Path("/ws"), {"BUILD_NUMBER": "3"}
    )
    kw = req.popen_kwargs()
    assert kw["args"] == ["make", "test"] and kw["cwd"] == "/ws/sub" and kw["start_new_session"] is True
    assert kw["env"]["X"] == "1" and kw["env"]["BUILD_NUMBER"] == "3" and "GITHUB_TOKEN" not in kw["env"]


def test_checkout_commands_exact_argv() -> None:
    assert checkout_commands("git@github.com:acme/house.git", SHA, Path("/ws/4")) == [
        ["git", "init", "-q", "/ws/4"],
        [
            "git",
            "-C",
            "/ws/4",
            "fetch",
            "-q",
            "--no-tags",
            "--depth=1",
            "--",
            "git@github.com:acme/house.git",
            SHA,
        ],
        ["git", "-C", "/ws/4", "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", SHA, "--"],
    ]
    assert fallback_fetch("u", Path("/w")) == [
        "git",
        "-C",
        "/w",
        "fetch",
        "-q",
        "--no-tags",
        "--",
        "u",
        "+refs/heads/*:refs/remotes/origin/*",
    ]


@pytest.mark.parametrize(
    "sha",
    [
        "--upload-pack=touch /tmp/pwned",
        "-c",
        "main",
        "HEAD",
        "0123456789abcdef",
        SHA.upper(),
        SHA + "0",
        SHA[:-1] + "g",
        f"{SHA[:-2]};x",
        f"{SHA}\n",
        " " + SHA,
        "refs/heads/main",
        "",
        "../../etc/passwd",
    ],
)
def test_hostile_shas_are_refused(sha: str) -> None:
    with pytest.raises(PayloadError, match="a commit sha is exactly 40 hex digits"):
        validate_sha(sha)
    with pytest.raises(PayloadError):
        checkout_commands("u", sha, Path("/w"))
