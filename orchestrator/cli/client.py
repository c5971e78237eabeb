"""API client commands: builds, logs [--follow], rerun, cancel, trigger, promote, rollback, edge-stat.

They talk to a running server's REST API: ``--url`` (default $MLSHIP_URL or
http://127.0.0.1:8000) and ``--token`` (default $MLSHIP_TOKEN, needed for writes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import requests

from orchestrator import defaults
from orchestrator.cli import EnvDefault, command
from orchestrator.errors import OrchestratorError
from orchestrator.models import is_sha

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT = defaults.API_CLIENT_TIMEOUT


class ApiError(OrchestratorError):
    """The API answered an error (its code and message are shown to the user)."""

    code = "api_error"


@dataclass
class Client:
    """A small REST client for /api/v1."""

    url: str
    token: str | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {**self._headers(), **kw.pop("headers", {})}
        try:
            resp = requests.request(
                method,
                self.url.rstrip("/") + "/api/v1" + path,
                headers=headers,
                timeout=kw.pop("timeout", TIMEOUT),
                **kw,
            )
        except requests.RequestException as exc:
            raise ApiError(
                f"cannot reach the orchestrator at {self.url}: {exc} (set --url or MLSHIP_URL)"
            ) from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                msg = f"{err['message']} ({err['code']}, HTTP {resp.status_code})"
            except (ValueError, KeyError, TypeError):
                msg = f"HTTP {resp.status_code}: {resp.text[:200]}"
            raise ApiError(msg)
        return resp

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return self.request(method, path, **kw).json()

    def follow(self, build_id: int, after: str = "0-0") -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(event, id, data) from the log stream, reconnecting with Last-Event-ID until ``end``."""
        last = after
        while True:
            resp = self.request(
                "GET",
                f"/builds/{build_id}/log/stream",
                stream=True,
                headers={"Last-Event-ID": last},
                timeout=(TIMEOUT, 60),
            )
            event, event_id, data = "message", "", ""
            for raw in resp.iter_lines(decode_unicode=True):
                if raw == "":
                    if data:
                        yield event, event_id, json.loads(data)
                        if event == "end":
                            return
                    if event_id:
                        last = event_id
                    event, event_id, data = "message", "", ""
                elif raw.startswith("event:"):
                    event = raw[6:].strip()
                elif raw.startswith("id:"):
                    event_id = raw[3:].strip()
                elif raw.startswith("data:"):
                    data += raw[5:].strip()
            time.sleep(0.2)  # the server closes streams after a while; resume where we were


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.token)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=EnvDefault("URL", DEFAULT_URL),
        help="server base URL (default $MLSHIP_URL or http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--token",
        default=EnvDefault("TOKEN"),
        help="API token (default $MLSHIP_TOKEN)",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a summary")


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


def format_build(b: dict[str, Any]) -> str:
    """One line per build: id, number, status, repo, branch, sha, duration, message."""
    msg = (b.get("message") or "").strip().splitlines()
    first = (msg[0] if msg else "")[:60]
    return (
        f"{b['id']:>5}  #{b['number']:<5} {b['status']:<10} {b['repo']:<28} {b.get('branch') or '-':<16} "
        f"{b.get('short_sha', '')[:7]:<8} {_fmt_duration(b.get('duration')):>7}  {first}"
    )


def _print_build(args: argparse.Namespace, b: dict[str, Any], out: IO[str] = sys.stdout) -> None:
    if args.json:
        print(json.dumps(b, indent=2), file=out)
    else:
        print(
            f"build {b['id']} (#{b['number']} of {b['repo']}) {b['status']}: {args.url.rstrip('/')}"
            f"{b.get('links', {}).get('web', '')}",
            file=out,
        )


def _builds_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--status", help="only builds with this status")
    p.add_argument("--branch", help="only builds of this branch")
    p.add_argument("--repo", help="only builds of this repository")
    p.add_argument("--limit", type=int, default=20)


@command("builds", "list recent builds", _builds_args)
def builds(args: argparse.Namespace) -> int:
    params = {
        k: v
        for k, v in (
            ("status", args.status),
            ("branch", args.branch),
            ("repo", args.repo),
            ("limit", args.limit),
        )
        if v
    }
    page = _client(args).json("GET", "/builds", params=params)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    print(f"{'ID':>5}  {'NUM':<6} {'STATUS':<10} {'REPO':<28} {'BRANCH':<16} {'SHA':<8} {'TIME':>7}  MESSAGE")
    for b in page["builds"]:
        print(format_build(b))
    print(f"({len(page['builds'])} of {page['total']})")
    return 0


def _logs_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("build", type=int, help="build id")
    p.add_argument("--follow", "-f", action="store_true", help="follow the live log until the build ends")


@command("logs", "print a build's log (--follow: live until it ends)", _logs_args)
def logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if not args.follow:
        sys.stdout.write(client.request("GET", f"/builds/{args.build}/log").text)
        return 0
    status = ""
    for event, _id, data in client.follow(args.build):
        if event == "log":
            print(f"[{data.get('step', '')}] {data.get('text', '')}", flush=True)
        elif event == "end":
            status = data.get("status", "")
            print(f"-- build {args.build} {status}" + (f": {data['error']}" if data.get("error") else ""))
        elif event == "error":
            raise ApiError(data.get("message", "the log stream failed"))
    return 0 if status == "success" else 1


def _id_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("build", type=int, help="build id")


@command("rerun", "re-run a finished build (same commit, new number)", _id_args)
def rerun(args: argparse.Namespace) -> int:
    _print_build(args, _client(args).json("POST", f"/builds/{args.build}/rerun"))
    return 0


@command("cancel", "cancel a queued or running build", _id_args)
def cancel(args: argparse.Namespace) -> int:
    _print_build(args, _client(args).json("POST", f"/builds/{args.build}/cancel"))
    return 0


def _deploy_args(p: argparse.ArgumentParser) -> None:
    _id_args(p)
    p.add_argument("action", choices=["pause", "resume", "abort", "promote"], help="what to do")


@command("canary", "pause, resume, abort (roll back) or promote-now a running canary", _deploy_args)
def canary(args: argparse.Namespace) -> int:
    _print_build(args, _client(args).json("POST", f"/builds/{args.build}/deploy/{args.action}"))
    print(f"{args.action}: sent; the deploy acts within a second (see its log)", file=sys.stderr)
    return 0


def _trigger_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("repo", help="allow-listed repository, e.g. acme/house-price")
    p.add_argument("ref", help="branch name, or a full 40-hex commit sha")


@command("trigger", "build a repository at a branch head or a commit", _trigger_args)
def trigger(args: argparse.Namespace) -> int:
    body = {"repo": args.repo, ("sha" if is_sha(args.ref) else "ref"): args.ref}
    _print_build(args, _client(args).json("POST", "/builds", json=body, timeout=60))
    return 0


def _promote_args(p: argparse.ArgumentParser) -> None:
    _id_args(p)
    p.add_argument("environment", help="environment name, e.g. prod")


@command("promote", "deploy a successful build to an environment", _promote_args)
def promote(args: argparse.Namespace) -> int:
    _print_build(
        args,
        _client(args).json("POST", f"/builds/{args.build}/promote", json={"environment": args.environment}),
    )
    return 0


def _rollback_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("repo", help="repository, e.g. acme/house-price")
    p.add_argument("environment", help="environment name, e.g. prod")


@command("rollback", "put the previous deployment of an environment back", _rollback_args)
def rollback(args: argparse.Namespace) -> int:
    _print_build(
        args,
        _client(args).json("POST", f"/environments/{args.environment}/rollback", json={"repo": args.repo}),
    )
    return 0


@command(
    "edge-stat", "show the environment's edge: each host's servers, weights and counters", _rollback_args
)
def edge_stat(args: argparse.Namespace) -> int:
    data = _client(args).json("GET", f"/environments/{args.environment}/edge", params={"repo": args.repo})
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
        return 0
    print(f"{data['repo']} {data['environment']}: edge {data['edge']}, build #{data['build_number']}")
    cols = ("status", "weight", "scur", "stot", "hrsp_2xx", "hrsp_5xx", "rtime", "check_status")
    for host, view in data["hosts"].items():
        if "error" in view:
            print(f"  {host}: {view['error']}")
            continue
        print(f"  {host}")
        print("    " + "  ".join(f"{c:>12}" for c in ("server", *cols)))
        for name, st in view["servers"].items():
            print("    " + "  ".join(f"{v!s:>12}" for v in (name, *(st[c] for c in cols))))
    return 0
