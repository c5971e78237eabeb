"""The ``mlship`` command (``orchestrator`` is its alias) against a live server, through real pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSHIP_", "ORCHESTRATOR_"))}
    return {**env, "MLSHIP_URL": url}


@pytest.fixture
def listed(live_server, seed) -> str:  # type: ignore[no-untyped-def]
    for i in range(60):
        seed.build(message=f"change {i} " + "x" * 60)
    return str(live_server.url)


def test_builds_into_a_closed_pipe_ends_quietly(listed: str) -> None:
    proc = subprocess.Popen(
        [str(BIN / "mlship"), "builds", "--limit", "50", "--json"],
        env=_env(listed),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes: every write is EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141
    assert err == ""


def test_builds_piped_into_head_prints_the_head_and_nothing_on_stderr(listed: str) -> None:
    out = subprocess.run(
        ["sh", "-c", f"'{BIN / 'mlship'}' builds --limit 50 | head -n 3"],
        env=_env(listed),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[:3] == ["ID", "NUM", "STATUS"]
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr
    assert out.stderr == ""


@pytest.mark.parametrize("name", ["mlship", "orchestrator"])
def test_both_names_run_the_same_command(listed: str, name: str) -> None:
    out = subprocess.run(
        [str(BIN / name), "builds", "--limit", "2"],
        env=_env(listed),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "(2 of 60)"


def test_old_url_variable_works_and_warns_once(listed: str) -> None:
    env = {**_env(listed), "ORCHESTRATOR_URL": listed}
    del env["MLSHIP_URL"]
    out = subprocess.run(
        [str(BIN / "mlship"), "builds", "--limit", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == "mlship: ORCHESTRATOR_URL is deprecated, use MLSHIP_URL\n"
