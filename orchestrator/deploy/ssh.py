"""The thin SSH layer (paramiko): connect with pinned host keys, run one argv, stream its output.

- Host keys come only from the operator's known_hosts file; an unknown or changed key raises
  HostKeyError naming the host, the offered fingerprint and how to pin it. There is no auto-add.
- Connect, banner and auth are bounded by ``connect_timeout``; each command by its own timeout.
- stdout and stderr are drained by two threads, so a command writing megabytes to both never
  blocks on a full SSH window; complete lines go to ``on_line(stream, text)``.
- The remote command runs as ``echo <marker>$$ >&2; exec <argv>``: sshd gives every session its
  own process group, so the pid the shell reports is the group of the command. Cancel (or a
  timeout) closes the channel *and* kills that group over a second channel: the remote work stops.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import hashlib
import io
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from orchestrator.deploy import commands as remote
from orchestrator.errors import Cancelled, ConfigError, HostKeyError, InfrastructureError, StepTimeout

LineCallback = Callable[[str, str], None]  # (stream "stdout"|"stderr", line without newline)
PID_MARKER = "__mlship_pid="
CHUNK = 64 * 1024
_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


@dataclass(frozen=True)
class Target:
    host: str
    port: int = 22
    user: str = "root"

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str = ""  # only with capture=True
    stderr: str = ""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint (what ``ssh-keygen -lf`` prints)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_private_key(text: str, source: str = "the deploy key") -> paramiko.PKey:
    """Parse an unencrypted OpenSSH/PEM private key of type ed25519, ecdsa or rsa."""
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    raise ConfigError(
        f"{source} is not an unencrypted ed25519, ecdsa or rsa private key; create one with "
        "`ssh-keygen -t ed25519 -N '' -f deploy_key` and store the private key file's text"
    )


def key_from_settings(settings: Any, name: str | None = None) -> paramiko.PKey:
    name = name or settings.ssh_key_secret  # a repository's own deploy key (reach.deploy_key) if given
    text = settings.secrets.require(name, "SSH private key for deploy hosts")
    return load_private_key(text, f"secret {name}")


class _Reject(paramiko.MissingHostKeyPolicy):
    """Unknown host key: refuse, and say exactly what was offered and how to pin it."""

    def __init__(self, target: Target, known_hosts: Path) -> None:
        self.target = target
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyError(
            f"host key of {self.target.known_hosts_name} is unknown: it offered {key.get_name()} "
            f"{fingerprint(key)}, which is not in {self.known_hosts}. Verify the fingerprint with the "
            f"host's owner, then add it: ssh-keyscan -p {self.target.port} {self.target.host} >> "
            f"{self.known_hosts}",
            host=str(self.target),
            fingerprint=fingerprint(key),
        )


def _lines(stream: str, on_line: LineCallback | None, capture: list[str] | None) -> Callable[[bytes], None]:
    """A feeder that splits bytes into complete lines (UTF-8 across chunk borders)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    partial = [""]

    def feed(data: bytes) -> None:
        text = partial[0] + decoder.decode(data, final=not data)
        parts = text.split("\n")
        partial[0] = "" if not data else parts.pop()
        for line in parts if data else [p for p in parts if p]:
            if capture is not None:
                capture.append(line)
            if on_line is not None:
                on_line(stream, line.rstrip("\r"))

    return feed


class RemoteHost:
    """One SSH connection to a deploy host; ``run`` may be called many times (one channel each)."""

    def __init__(
        self, target: Target, key: paramiko.PKey, known_hosts: Path | None, connect_timeout: float = 10.0
    ) -> None:
        if known_hosts is None:
            raise ConfigError(
                "no known_hosts file is configured: set MLSHIP_KNOWN_HOSTS to a file with the deploy "
                "hosts' keys (ssh-keyscan -p PORT HOST >> FILE, after verifying them)"
            )
        if not Path(known_hosts).is_file():
            raise ConfigError(f"known_hosts file {known_hosts} does not exist (MLSHIP_KNOWN_HOSTS)")
        self.target = target
        self.key = key
        self.known_hosts = Path(known_hosts)
        self.connect_timeout = connect_timeout
        self.client: paramiko.SSHClient | None = None

    def __enter__(self) -> RemoteHost:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))  # only the operator's file, never ~/.ssh
        client.set_missing_host_key_policy(_Reject(self.target, self.known_hosts))
        t = self.connect_timeout
        started = time.monotonic()
        try:
            client.connect(
                self.target.host,
                port=self.target.port,
                username=self.target.user,
                pkey=self.key,
                timeout=t,
                banner_timeout=t,
                auth_timeout=t,
                channel_timeout=t,
                allow_agent=False,
                look_for_keys=False,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"host key of {self.target.known_hosts_name} CHANGED: it offered {exc.key.get_name()} "
                f"{fingerprint(exc.key)} but {self.known_hosts} pins {fingerprint(exc.expected_key)}. This "
                "may be an attack or a reinstalled host: verify with the host's owner, then replace the "
                f"line (ssh-keygen -R '{self.target.known_hosts_name}' -f {self.known_hosts}; ssh-keyscan "
                f"-p {self.target.port} {self.target.host} >> {self.known_hosts})",
                host=str(self.target),
                fingerprint=fingerprint(exc.key),
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise InfrastructureError(
                f"SSH authentication to {self.target} failed ({exc}): add the deploy key's public key to "
                f"~{self.target.user}/.ssh/authorized_keys on the host",
                host=str(self.target),
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            took = time.monotonic() - started
            why = str(exc) or type(exc).__name__
            if "banner" in why or why == "No existing session":  # paramiko's words for a silent peer
                why = "the port accepted the connection but sent no SSH greeting (is sshd listening there?)"
            raise InfrastructureError(
                f"cannot reach {self.target} over SSH after {took:.1f}s (timeout {t:g}s): "
                f"{why}; check the host, port and firewall",
                host=str(self.target),
            ) from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        self.client = client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _channel(self) -> paramiko.Channel:
        if self.client is None:
            self.connect()
        assert self.client is not None
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise InfrastructureError(f"SSH connection to {self.target} was lost", host=str(self.target))
        try:
            return transport.open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, OSError) as exc:
            raise InfrastructureError(
                f"cannot open an SSH channel to {self.target}: {exc}", host=str(self.target)
            ) from None

    def run(
        self,
        argv: Sequence[str],
        *,
        on_line: LineCallback | None = None,
        stdin: bytes | None = None,
        timeout: float = 600.0,
        cancel: Any = None,
        capture: bool = False,
    ) -> Result:
        """Run ``argv`` (quoted with shlex.join) and return its exit code (and output if ``capture``).

        Raises Cancelled if ``cancel`` (a CancelToken) fires, StepTimeout after ``timeout`` seconds
        (in both cases the remote process group is killed), InfrastructureError if the connection breaks.
        """
        session = _Session(self, self._channel(), on_line, capture)
        remove = cancel.on_cancel(lambda: session.stop("cancelled")) if cancel is not None else (lambda: None)
        try:
            session.execute(f"echo {PID_MARKER}$$ >&2; exec {shlex.join(argv)}", stdin, timeout)
        except (paramiko.SSHException, OSError) as exc:
            session.stop("error")
            raise InfrastructureError(
                f"SSH command on {self.target} failed: {exc}", host=str(self.target), command=shlex.join(argv)
            ) from None
        finally:
            remove()
        return session.result(argv, timeout)

    @staticmethod
    def _drain(recv: Callable[[int], bytes], feed: Callable[[bytes], None], stopped: threading.Event) -> None:
        while True:
            try:
                data = recv(CHUNK)
            except TimeoutError:
                if stopped.is_set():
                    return
                continue
            except (OSError, EOFError, paramiko.SSHException):
                return
            if not data:
                feed(b"")  # flush a last line without newline
                return
            feed(data)

    def _kill(self, pid: int) -> None:
        """Kill the remote process group over a second channel."""
        chan = self._channel()
        try:
            chan.settimeout(self.connect_timeout)
            chan.exec_command(shlex.join(remote.kill_group(pid)))
            chan.recv_exit_status()
        finally:
            chan.close()


class _Session:
    """One command on one channel: its output readers, the remote pid, and how it was stopped."""

    def __init__(self, host: RemoteHost, chan: paramiko.Channel, on_line: LineCallback | None, capture: bool):
        self.host = host
        self.chan = chan
        self.out: list[str] | None = [] if capture else None
        self.err: list[str] | None = [] if capture else None
        self.out_feed = _lines("stdout", on_line, self.out)
        self.err_feed = _lines("stderr", on_line, self.err)
        self.pid: list[int] = []
        self.pid_seen = threading.Event()
        self.first_err = True
        self.stopped = threading.Event()
        self.reason: list[str] = []

    def feed_err(self, data: bytes) -> None:
        """stderr, minus the pid marker line the wrapper prints first."""
        if self.first_err:
            self.first_err = False
            head, sep, rest = data.partition(b"\n")
            text = head.decode(errors="replace")
            if text.startswith(PID_MARKER) and sep:
                with contextlib.suppress(ValueError):
                    self.pid.append(int(text[len(PID_MARKER) :]))
                self.pid_seen.set()
                if not rest:
                    return
                data = rest
            else:
                self.pid_seen.set()
        self.err_feed(data)

    def stop(self, why: str) -> None:
        """Kill the remote process group (once its pid is known) and close the channel."""
        if self.stopped.is_set():
            return
        self.reason.append(why)
        self.stopped.set()
        self.pid_seen.wait(2)
        if self.pid:
            with contextlib.suppress(Exception):
                self.host._kill(self.pid[0])
        with contextlib.suppress(Exception):
            self.chan.close()

    def execute(self, command: str, stdin: bytes | None, timeout: float) -> None:
        chan = self.chan
        chan.settimeout(0.5)
        chan.exec_command(command)
        readers = [
            threading.Thread(
                target=RemoteHost._drain, args=(chan.recv, self.out_feed, self.stopped), daemon=True
            ),
            threading.Thread(
                target=RemoteHost._drain, args=(chan.recv_stderr, self.feed_err, self.stopped), daemon=True
            ),
        ]
        for r in readers:
            r.start()
        if stdin:  # the reader may start slowly (a container starting): allow the command's timeout
            chan.settimeout(timeout)
            chan.sendall(stdin)
            chan.settimeout(0.5)
        chan.shutdown_write()
        self.wait(timeout)
        for r in readers:
            r.join(5 if not self.stopped.is_set() else 1)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        chan = self.chan
        while not chan.exit_status_ready() and not self.stopped.is_set():
            if time.monotonic() > deadline:
                self.stop("timeout")
                return
            if chan.closed and not chan.exit_status_ready():
                return
            time.sleep(0.05)

    def result(self, argv: Sequence[str], timeout: float) -> Result:
        target = self.host.target
        why = self.reason[0] if self.reason else ""
        if why == "cancelled":
            raise Cancelled(f"cancelled: killed `{shlex.join(argv)[:200]}` on {target}")
        if why == "timeout":
            raise StepTimeout(
                f"`{shlex.join(argv)[:200]}` on {target} did not finish within {timeout:g}s; it was killed",
                host=str(target),
            )
        if not self.chan.exit_status_ready():
            raise InfrastructureError(
                f"SSH connection to {target} closed before `{shlex.join(argv)[:200]}` finished",
                host=str(target),
            )
        code = self.chan.recv_exit_status()
        self.chan.close()
        return Result(code, "\n".join(self.out or []), "\n".join(self.err or []))
