"""A Python base image for the example's builds, on a machine that may reach no outside registry.

Order: the official ``python:3.11-slim`` if present or pullable, ``localbase/python:3.11`` if
present, a cached ``docker save`` tarball, then a local debootstrap build (about 70 s, once per
machine), imported with docker-py and cached. ``python -m orchestrator.devstack.base_image`` prints
the tag to use as BASE_IMAGE (scripts/base-image runs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import defaults
from orchestrator.errors import InfrastructureError

Progress = Callable[[str], None]
PULL_TIMEOUT = defaults.BASE_IMAGE_PULL_TIMEOUT
# The host CA bundle lets pip inside docker build reach the package index; pip.conf keeps its mirror.
HOST_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf")
IMAGE_CHANGES = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8"]


@dataclass(frozen=True)
class Choice:
    """Where the base image comes from (overridable by the same variables scripts/base-image read)."""

    official: str = "python:3.11-slim"
    local: str = "localbase/python:3.11"
    cache: Path = Path("/var/cache/mlship/localbase-python3.11.tar")

    @classmethod
    def from_env(cls) -> Choice:
        env = os.environ
        return cls(
            env.get("OFFICIAL_BASE_IMAGE", cls.official),
            env.get("LOCAL_BASE_IMAGE", cls.local),
            Path(env.get("BASE_IMAGE_CACHE", str(cls.cache))),
        )


def debootstrap_argv(rootfs: Path) -> list[str]:
    return [
        "debootstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,python3-pip,ca-certificates",
        "bookworm",
        str(rootfs),
        "http://deb.debian.org/debian",
    ]


def _has(client: Any, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _pull(client: Any, tag: str, timeout: float) -> bool:
    """Try a pull, giving up after ``timeout`` (a pull with no route hangs in name resolution)."""
    done = threading.Event()
    result: list[bool] = []

    def pull() -> None:
        try:
            client.images.pull(tag)
            result.append(True)
        except Exception:
            result.append(False)
        done.set()

    threading.Thread(target=pull, daemon=True).start()
    return done.wait(timeout) and result == [True]


def _run(argv: list[str], say: Progress) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        tail = [*tail[-40:], line]
        if line.startswith(("I: Retrieving", "I: Extracting", "I: Installing")):
            say(line.rstrip())
    if proc.wait() != 0:
        raise InfrastructureError(f"{argv[0]} failed:\n" + "".join(tail))


def _build_local(client: Any, choice: Choice, say: Progress) -> None:
    if shutil.which("debootstrap") is None:
        raise InfrastructureError("debootstrap is missing: apt-get install -y debootstrap")
    with tempfile.TemporaryDirectory(prefix="mlship-rootfs.", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        say(f"base-image: debootstrap bookworm into {rootfs} (about 70 s, once per machine)")
        _run(debootstrap_argv(rootfs), say)
        for name in HOST_FILES:
            if Path(name).is_file():
                shutil.copy(name, rootfs / name.lstrip("/"))
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / sub, ignore_errors=True)
            (rootfs / sub).mkdir(parents=True)
        tarball = Path(tmp) / "rootfs.tar"
        _run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], say)
        repo, _, tag = choice.local.rpartition(":")
        client.api.import_image(src=str(tarball), repository=repo, tag=tag, changes=IMAGE_CHANGES)
    choice.cache.parent.mkdir(parents=True, exist_ok=True)
    partial = choice.cache.with_suffix(".tmp")
    with partial.open("wb") as f:
        for chunk in client.images.get(choice.local).save(named=True):
            f.write(chunk)
    partial.replace(choice.cache)
    say(f"base-image: built {choice.local} and cached it at {choice.cache}")


def ensure(client: Any, choice: Choice | None = None, say: Progress | None = None) -> str:
    """The BASE_IMAGE tag to use, providing it first if the daemon has none."""
    choice = choice or Choice.from_env()
    say = say or (lambda line: None)
    for tag in (choice.official, choice.local):
        if _has(client, tag):
            return tag
    if _pull(client, choice.official, PULL_TIMEOUT):
        say(f"base-image: pulled {choice.official}")
        return choice.official
    say(f"base-image: cannot pull {choice.official} (no registry reachable); using {choice.local}")
    if choice.cache.is_file() and choice.cache.stat().st_size:
        say(f"base-image: loading cached {choice.cache}")
        with choice.cache.open("rb") as f:
            client.images.load(f)
        return choice.local
    _build_local(client, choice, say)
    return choice.local


def main() -> int:
    import docker

    client = docker.from_env(timeout=600)
    try:
        print(ensure(client, say=lambda line: print(line, file=sys.stderr, flush=True)))
    except InfrastructureError as exc:
        print(f"base-image: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
