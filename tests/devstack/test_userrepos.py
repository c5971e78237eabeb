"""The user's repositories in standalone: mirroring, validation errors, and the signed curl (real git,
real openssl and curl against a local HTTP receiver)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from orchestrator.devstack.deliveries import sign
from orchestrator.devstack.services import git
from orchestrator.devstack.stack import PLACEHOLDER_VARS
from orchestrator.devstack.userrepos import UserRepo, curl_command, prepare
from orchestrator.errors import ConfigError

GOOD = (
    "version: 1\nname: shop\nimage: '${REGISTRY}/shop'\nsteps:\n"
    "  - name: build\n    docker_build: {context: ., dockerfile: Dockerfile}\n"
)


def _repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    git("init", "-q", "-b", "main", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "first", cwd=path)
    return path


def test_a_local_repository_is_mirrored_and_refreshed(tmp_path: Path) -> None:
    src = _repo(tmp_path / "shop", {"pipeline.yaml": GOOD})
    [repo] = prepare([str(src)], tmp_path / "state", PLACEHOLDER_VARS)
    assert (repo.name, repo.branch, repo.mirror) == ("local/shop", "main", tmp_path / "state/repos/shop.git")
    assert repo.head() == git("rev-parse", "HEAD", cwd=src)
    assert repo.config() == {
        "clone_url": f"file://{repo.mirror}",
        "webhook_secrets": ["WEBHOOK_SECRET_SHOP"],
        "triggers": {"pull_request_merged": ["main"], "push": ["main"]},
        "reach": {"deploy_targets": [{"host": "127.0.0.1"}]},
    }
    (src / "app.py").write_text("print('v2')\n")
    git("add", "-A", cwd=src)
    git("commit", "-q", "-m", "second", cwd=src)
    again = UserRepo.at(str(src), tmp_path / "state").sync()
    assert again.head() == git("rev-parse", "HEAD", cwd=src)


def test_every_problem_is_reported_at_once_with_file_and_line(tmp_path: Path) -> None:
    bad = _repo(tmp_path / "bad", {"pipeline.yaml": GOOD.replace("docker_build", "docker_bild")})
    empty = _repo(tmp_path / "empty", {"README": "no pipeline\n"})
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ConfigError) as err:
        prepare([str(bad), str(empty), str(plain)], tmp_path / "state", PLACEHOLDER_VARS)
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{bad}/pipeline.yaml:6: steps[0].docker_bild: unknown key 'docker_bild'")
    assert lines[1] == (
        f"--repo {empty}: no pipeline.yaml on 'main': write one with `mlship init {empty}`, commit it, "
        "and start again"
    )
    assert lines[2] == f"--repo {plain}: not a git repository (run `git init` and commit first)"


def test_two_repositories_with_one_name_are_refused(tmp_path: Path) -> None:
    a = _repo(tmp_path / "a" / "shop", {"pipeline.yaml": GOOD})
    b = _repo(tmp_path / "b" / "shop", {"pipeline.yaml": GOOD})
    with pytest.raises(ConfigError, match=f"--repo {b}: another --repo is also named local/shop"):
        prepare([str(a), str(b)], tmp_path / "state", PLACEHOLDER_VARS)


class _Receiver:
    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((dict(self.headers), body))
                self.send_response(202)
                self.end_headers()
                self.wfile.write(b'{"verdict":"queued"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/github"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.mark.parametrize("secret", ["3f0c9a", 'it\'s a "secret" $HOME `x`'])
def test_the_printed_curl_sends_a_correctly_signed_delivery(receiver: _Receiver, secret: str) -> None:
    if not (shutil.which("curl") and shutil.which("openssl")):
        from tests.conftest import unavailable

        unavailable("curl and openssl are needed")
    payload = {"ref": "refs/heads/main", "after": "a" * 40, "repository": {"full_name": "local/shop"}}
    out = subprocess.run(
        ["sh", "-c", curl_command(receiver.url, secret, payload)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == '{"verdict":"queued"}'
    [(headers, body)] = receiver.got
    assert json.loads(body) == payload
    assert headers["X-Hub-Signature-256"] == sign(secret, body)
    assert headers["X-GitHub-Event"] == "push" and headers["Content-Type"] == "application/json"
    assert headers["X-GitHub-Delivery"].startswith("first-")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[a, b]\n", "--config {f}: expected a mapping with 'repositories' and/or 'vars'"),
        ("redis_url: x\n", "--config {f}: expected a mapping with 'repositories' and/or 'vars'"),
        ("repositories: {a: [\n", "--config {f} is not valid YAML"),
    ],
)
def test_a_bad_config_file_stops_standalone_before_it_starts(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "extra.yaml"
    cfg.write_text(text)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "standalone",
            "--config",
            str(cfg),
            "--state",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: " + message.format(f=cfg))
    assert not (tmp_path / "s").exists()
