"""orchestrator.deploy.ssh against the test bed's real sshd hosts."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.deploy.ssh import RemoteHost, Target, fingerprint, load_private_key
from orchestrator.devstack.services import free_port
from orchestrator.errors import Cancelled, ConfigError, HostKeyError, InfrastructureError, StepTimeout
from orchestrator.steps.base import CancelToken

pytestmark = pytest.mark.ssh


def _host(deploy_hosts: Any, name: str = "qa", known: Path | None = None, timeout: float = 5.0) -> RemoteHost:
    h = deploy_hosts[name]
    key = load_private_key(deploy_hosts.client_key.read_text())
    return RemoteHost(Target("127.0.0.1", h.port, h.user), key, known or deploy_hosts.known_hosts, timeout)


def test_run_returns_exit_code_and_quotes_every_value(deploy_hosts: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}); `touch {marker}` ' \" ; touch {marker} \n line2"
    with _host(deploy_hosts) as ssh:
        got: list[tuple[str, str]] = []
        res = ssh.run(["printf", "%s\\n", hostile], on_line=lambda s, t: got.append((s, t)), capture=True)
        assert res.exit_code == 0
        assert res.stdout == hostile
        assert ssh.run(["sh", "-c", "exit 7"]).exit_code == 7
    assert not marker.exists()


def test_stdin_is_passed_and_not_in_argv(deploy_hosts: Any) -> None:
    with _host(deploy_hosts) as ssh:
        res = ssh.run(["cat"], stdin=b"s3cret-password\n", capture=True)
    assert res.stdout == "s3cret-password"


def test_megabytes_on_both_streams_without_deadlock(deploy_hosts: Any) -> None:
    # 4 MB on stdout and 4 MB on stderr, interleaved: a reader of one stream only would block forever.
    script = (
        "import sys\n"
        "for i in range(50000):\n"
        "    sys.stdout.write('out %06d %s\\n' % (i, 'x' * 70))\n"
        "    sys.stderr.write('err %06d %s\\n' % (i, 'y' * 70))\n"
    )
    counts = {"stdout": 0, "stderr": 0}
    last: dict[str, str] = {}

    def on_line(stream: str, text: str) -> None:
        counts[stream] += 1
        last[stream] = text

    started = time.monotonic()
    with _host(deploy_hosts) as ssh:
        res = ssh.run(["python3", "-c", script], on_line=on_line, timeout=60)
    assert res.exit_code == 0
    assert counts == {"stdout": 50000, "stderr": 50000}
    assert last["stdout"].startswith("out 049999") and last["stderr"].startswith("err 049999")
    assert time.monotonic() - started < 30


def _remote_alive(tag: str) -> bool:
    return subprocess.run(["pgrep", "-f", tag], capture_output=True).returncode == 0


def test_cancel_kills_the_remote_process_group(deploy_hosts: Any) -> None:
    tag = f"mlship-cancel-{uuid.uuid4().hex[:8]}"
    # A child in the background and the foreground process: both must die.
    token = CancelToken()
    with _host(deploy_hosts) as ssh:
        threading.Timer(1.0, token.set).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            ssh.run(
                ["sh", "-c", f"sh -c 'sleep 300' {tag}-bg & sleep 301; : {tag}", tag],
                cancel=token,
                timeout=60,
            )
        assert time.monotonic() - started < 6
    assert _gone_within(10, f"{tag}-bg") and _gone_within(10, tag)


def _gone_within(seconds: float, tag: str) -> bool:
    """Whether no process tagged ``tag`` is left on the host within ``seconds`` (kills take a moment)."""
    deadline = time.monotonic() + seconds
    while _remote_alive(tag):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_command_timeout_kills_the_remote_process(deploy_hosts: Any) -> None:
    tag = f"mlship-timeout-{uuid.uuid4().hex[:8]}"
    with _host(deploy_hosts) as ssh:
        started = time.monotonic()
        with pytest.raises(StepTimeout, match="did not finish within 1s"):
            ssh.run(["sh", "-c", "sleep 302", tag], timeout=1)
        assert time.monotonic() - started < 5
    assert _gone_within(10, tag)


def test_unknown_host_key_is_refused_with_fingerprint_and_fix(deploy_hosts: Any, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(deploy_hosts["prod"].known_hosts_line())  # only prod is pinned
    with pytest.raises(HostKeyError) as err:
        _host(deploy_hosts, "qa", known).connect()
    msg = str(err.value)
    port = deploy_hosts["qa"].port
    pub = (deploy_hosts["qa"].directory / "ssh_host_ed25519_key.pub").read_text()
    expected_fp = fingerprint(load_private_key(deploy_hosts["qa"].host_key.read_text()))
    assert pub and expected_fp in msg
    assert f"[127.0.0.1]:{port}" in msg and "unknown" in msg
    assert f"ssh-keyscan -p {port} 127.0.0.1 >> {known}" in msg
    assert known.read_text() == deploy_hosts["prod"].known_hosts_line()  # nothing auto-added


def test_changed_host_key_is_refused(deploy_hosts: Any, tmp_path: Path) -> None:
    # Pin prod's key for qa's address: qa then presents a key different from the pinned one.
    qa, prod = deploy_hosts["qa"], deploy_hosts["prod"]
    pinned = prod.known_hosts_line().replace(f"[127.0.0.1]:{prod.port}", f"[127.0.0.1]:{qa.port}")
    known = tmp_path / "known_hosts"
    known.write_text(pinned)
    with pytest.raises(HostKeyError, match="CHANGED") as err:
        _host(deploy_hosts, "qa", known).connect()
    assert fingerprint(load_private_key(qa.host_key.read_text())) in str(err.value)
    assert fingerprint(load_private_key(prod.host_key.read_text())) in str(err.value)


def test_missing_known_hosts_is_a_config_error(deploy_hosts: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MLSHIP_KNOWN_HOSTS"):
        _host(deploy_hosts, known=tmp_path / "nope")


def test_closed_port_fails_fast_with_clear_error(deploy_hosts: Any) -> None:
    port = free_port()
    key = load_private_key(deploy_hosts.client_key.read_text())
    started = time.monotonic()
    with pytest.raises(InfrastructureError, match=rf"cannot reach \w+@127.0.0.1:{port}"):
        RemoteHost(Target("127.0.0.1", port, "root"), key, deploy_hosts.known_hosts, 3).connect()
    assert time.monotonic() - started < 3


def test_silent_listener_times_out_within_the_connect_timeout(deploy_hosts: Any) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    port = srv.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(srv.accept()[0]), daemon=True).start()
    key = load_private_key(deploy_hosts.client_key.read_text())
    started = time.monotonic()
    try:
        with pytest.raises(InfrastructureError, match=r"cannot reach .*timeout 2s.*no SSH greeting"):
            RemoteHost(Target("127.0.0.1", port, "root"), key, deploy_hosts.known_hosts, 2).connect()
        took = time.monotonic() - started
        assert 1.5 < took < 4.5
    finally:
        for s in accepted:
            s.close()
        srv.close()


@pytest.mark.parametrize("kind,args", [("ed25519", []), ("ecdsa", ["-b", "256"]), ("rsa", ["-b", "2048"])])
def test_private_key_types_load(tmp_path: Path, kind: str, args: list[str]) -> None:
    path = tmp_path / kind
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *args, "-N", "", "-f", str(path)], check=True)
    key = load_private_key(path.read_text())
    pub = (tmp_path / f"{kind}.pub").read_text().split()
    assert key.get_base64() == pub[1]


def test_garbage_key_is_a_config_error_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as err:
        load_private_key("not-a-key-SECRETVALUE", "secret DEPLOY_SSH_KEY")
    assert "SECRETVALUE" not in str(err.value) and "DEPLOY_SSH_KEY" in str(err.value)


def test_env_is_not_inherited_secret_free(deploy_hosts: Any) -> None:
    # The sshd test host points docker at the test daemon (SetEnv): remote commands see it.
    with _host(deploy_hosts) as ssh:
        res = ssh.run(["sh", "-c", "echo $DOCKER_HOST"], capture=True)
    assert res.stdout.strip() == os.environ.get("MLSHIP_TEST_DOCKER_HOST", res.stdout.strip())
