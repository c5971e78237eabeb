"""A clean workspace per build with the exact commit checked out.

The clone URL comes from the server configuration, never from a payload. The sha is checked to be
40 hex digits before git sees it, and ``--`` separates options from the URL and refs. git commands
are built as argv lists (``checkout_commands``) and run in a thin layer with a timeout and cancel.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator import defaults
from orchestrator.errors import Cancelled, InfrastructureError, PayloadError
from orchestrator.models import is_sha

GIT_TIMEOUT = defaults.GIT_TIMEOUT


def validate_sha(sha: str) -> str:
    """Return ``sha`` if it is a full lowercase commit id, else raise PayloadError."""
    if not is_sha(sha):
        raise PayloadError(f"refusing to check out {sha!r}: a commit sha is exactly 40 hex digits", sha=sha)
    return sha


def build_dir(root: Path, build_id: int) -> Path:
    return root / "builds" / str(int(build_id))


def checkout_commands(clone_url: str, sha: str, dest: Path) -> list[list[str]]:
    """The git commands that put ``sha`` of ``clone_url`` into ``dest`` (shallow: one commit)."""
    validate_sha(sha)
    d = str(dest)
    return [
        ["git", "init", "-q", d],
        ["git", "-C", d, "fetch", "-q", "--no-tags", "--depth=1", "--", clone_url, sha],
        ["git", "-C", d, "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", sha, "--"],
    ]


def fallback_fetch(clone_url: str, dest: Path) -> list[str]:
    """For servers that refuse fetching a bare sha: fetch the branches, then check out as before."""
    return [
        "git",
        "-C",
        str(dest),
        "fetch",
        "-q",
        "--no-tags",
        "--",
        clone_url,
        "+refs/heads/*:refs/remotes/origin/*",
    ]


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "SSH_AUTH_SOCK", "LANG")}
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
        }
    )
    return env


def _verb(argv: list[str]) -> str:
    """The git subcommand of an argv (skipping -C dir and -c key=value)."""
    i = 1
    while i < len(argv) and argv[i] in ("-C", "-c"):
        i += 2
    return argv[i] if i < len(argv) else "?"


def run_git(
    argv: list[str],
    timeout: float = GIT_TIMEOUT,
    on_cancel: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
) -> str:
    """Run one git command in its own process group; InfrastructureError with its stderr on failure."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_git_env(),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    cancelled = []

    def kill() -> None:
        cancelled.append(True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    remove = on_cancel(kill) if on_cancel else (lambda: None)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill()
        proc.communicate()
        raise InfrastructureError(f"{' '.join(argv[:4])} timed out after {timeout:.0f}s") from None
    finally:
        remove()
    if cancelled:
        raise Cancelled("cancelled during checkout")
    if proc.returncode != 0:
        raise InfrastructureError(
            f"git {_verb(argv)} failed: {err.decode(errors='replace').strip()[-1500:]}",
            argv=argv,
        )
    return out.decode(errors="replace")


def prepare(
    root: Path,
    build_id: int,
    clone_url: str,
    sha: str,
    on_cancel: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
) -> Path:
    """A fresh directory with ``sha`` checked out; returns its path. Raises InfrastructureError."""
    validate_sha(sha)
    dest = build_dir(root, build_id)
    clean(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    init, fetch, checkout = checkout_commands(clone_url, sha, dest)
    run_git(init, on_cancel=on_cancel)
    try:
        run_git(fetch, on_cancel=on_cancel)
    except InfrastructureError as first:
        try:
            run_git(fallback_fetch(clone_url, dest), on_cancel=on_cancel)
            run_git(["git", "-C", str(dest), "cat-file", "-e", f"{sha}^{{commit}}"], on_cancel=on_cancel)
        except InfrastructureError:
            raise InfrastructureError(
                f"could not fetch commit {sha} from {clone_url}: {first}", sha=sha
            ) from first
    run_git(checkout, on_cancel=on_cancel)
    return dest


def clean(path: Path) -> None:
    """Remove a workspace (tolerates files made read-only by a build)."""
    if not path.exists():
        return
    for _ in range(3):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.1)
