"""shell: a command on the worker itself (only where the server configuration sets allow.shell).

The command is an argv list (never a shell string built from data), runs in the workspace in its
own process group with a minimal environment (the worker's secrets are not inherited), and the
whole group is killed on cancel or timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from orchestrator import defaults
from orchestrator.errors import InfrastructureError, StepFailed
from orchestrator.pipeline import ShellSpec
from orchestrator.steps.base import StepContext

KILL_GRACE = defaults.SHELL_KILL_GRACE


@dataclass(frozen=True)
class ShellRequest:
    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)

    def popen_kwargs(self) -> dict[str, Any]:
        return {
            "args": list(self.argv),
            "cwd": self.cwd,
            "env": dict(self.env),
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            "start_new_session": True,
        }


def shell_request(spec: ShellSpec, workspace: Path, variables: Mapping[str, str]) -> ShellRequest:
    cwd = workspace / spec.workdir if spec.workdir else workspace
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(workspace),
        "LANG": "C.UTF-8",
        **{k: v for k, v in variables.items()},
        **spec.env,
    }
    return ShellRequest(argv=tuple(spec.command), cwd=str(cwd), env=env)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _pump(pipe: IO[bytes], ctx: StepContext, stream: str) -> None:
    for chunk in iter(lambda: pipe.read1(65536) if hasattr(pipe, "read1") else pipe.read(65536), b""):
        ctx.log.write(chunk, stream)


def shell(ctx: StepContext) -> None:
    if not ctx.settings.repo(ctx.build.repo) or not ctx.settings.repositories[ctx.build.repo].allow.shell:
        raise StepFailed("shell steps are not allowed for this repository (allow.shell in the server config)")
    req = shell_request(ctx.step.spec, ctx.workspace, ctx.vars)
    try:
        proc = subprocess.Popen(**req.popen_kwargs())
    except OSError as exc:
        raise StepFailed(f"cannot start {req.argv[0]}: {exc.strerror}") from exc
    remove = ctx.cancel.on_cancel(lambda: kill_group(proc))
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(p, ctx, name), daemon=True)
        for p, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
    ]
    for t in pumps:
        t.start()
    try:
        code = proc.wait()
    finally:
        remove()
    with contextlib.suppress(ProcessLookupError):  # children that outlived the main process
        os.killpg(proc.pid, signal.SIGKILL)
    for t in pumps:
        t.join(5)
    ctx.stopped()
    ctx.record.exit_code = code
    ctx.log.line(f"exit code {code}")
    if code < 0:
        raise InfrastructureError(f"command killed by signal {-code}")
    if code != 0:
        raise StepFailed(f"command exited with code {code}", exit_code=code)


def register(kinds: dict[str, Any]) -> None:
    kinds["shell"] = shell
