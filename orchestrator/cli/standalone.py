"""``mlship standalone [--demo] [--repo PATH_OR_URL]... [--config FILE]``: the whole system on this
machine, on embedded defaults, serving the example repository and the user's own."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.cli import EnvDefault, command
from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.devstack.stack import Stack


def _configure(p: argparse.ArgumentParser) -> None:
    default_state = "/var/lib/mlship/standalone" if os.geteuid() == 0 else "~/.local/share/mlship/standalone"
    p.add_argument(
        "--state",
        default=EnvDefault("STATE", default_state),
        help="where Redis data, the registry, keys, the repositories and logs live "
        f"(default $MLSHIP_STATE or {default_state})",
    )
    p.add_argument(
        "--port",
        type=int,
        default=EnvDefault("PORT", 8000, int),
        help="port of the web app: status page, API, webhook (default $MLSHIP_PORT or 8000)",
    )
    p.add_argument("--workers", type=int, default=1, help="number of build workers")
    p.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="PATH_OR_URL",
        help="also serve this git repository (a local path or a clone URL; repeatable): it is mirrored "
        "under the state directory, its pipeline.yaml validated, and the banner shows a curl for build #1",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML file in the server configuration's format: its repositories and vars are added",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="also merge a change in a local example repo, send the signed webhook, wait for the "
        "deploy and print a prediction from the deployed container",
    )
    p.add_argument("--exit", action="store_true", help="stop everything after the demo instead of waiting")
    p.add_argument(
        "--keep-deployments",
        action="store_true",
        help="leave the deployed inference containers running when stopping",
    )


@command(
    "standalone",
    "run everything on this machine (Redis, Docker, registry, SSH host, web, worker)",
    _configure,
)
def standalone(args: argparse.Namespace) -> int:
    from orchestrator.devstack.stack import Stack

    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    stack = Stack(
        Path(args.state).expanduser(),
        say=say,
        web_port=args.port,
        redis_url=os.environ.get("REDIS_URL"),
        user_sources=tuple(args.repo),
        extra_config=_extra_config(args.config),
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        stack.start_services()
        stack.write_config()
        stack.start_app(workers=args.workers)
        _banner(stack)
        if args.demo:
            from orchestrator.devstack.demo import run_demo

            ok = run_demo(stack, say)
            if args.exit or not ok:
                return 0 if ok else 1
        say("running; press Ctrl-C to stop everything this command started")
        while all(p.poll() is None for p in stack.procs):
            time.sleep(1)
        say("a process exited; see the logs in " + str(stack.state / "logs"))
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping")
        stack.stop(keep_deployments=args.keep_deployments)


def _extra_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or set(data) - {"repositories", "vars"}:
        raise ConfigError(f"--config {path}: expected a mapping with 'repositories' and/or 'vars'")
    return data


def _banner(stack: Stack) -> None:
    from orchestrator.devstack.stack import REPO_NAME
    from orchestrator.devstack.userrepos import curl_command

    hook = f"{stack.url}/webhooks/github"
    lines = [
        "",
        f"  status page    {stack.url}/",
        f"  webhook URL    {hook}   (content type application/json)",
        f"  webhook secret {stack.webhook_secret}",
        f"  API token      {stack.api_token}",
        f"  repository     {REPO_NAME}  ←  {stack.origin.url if stack.origin else ''}",
        f"  config         {stack.config_path}",
        f"  logs           {stack.state / 'logs'}",
        "",
    ]
    for repo in stack.user_repos:
        lines += [
            f"  your repository {repo.name}  ←  {repo.source}  (mirror {repo.mirror})",
            f"    webhook URL    {hook}",
            f"    webhook secret {stack.user_secrets[repo.name]}",
            f"    first build    (a signed push delivery for {repo.branch} at {repo.head()[:7]}; paste it):",
            "",
            curl_command(hook, stack.user_secrets[repo.name], repo.push_payload()),
            "",
        ]
    print("\n".join(lines), file=sys.stdout, flush=True)
