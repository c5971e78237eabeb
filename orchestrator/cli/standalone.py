"""``mlship standalone [--demo]``: the whole system on this machine, on embedded defaults."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from orchestrator.cli import EnvDefault, command


def _configure(p: argparse.ArgumentParser) -> None:
    default_state = "/var/lib/mlship/standalone" if os.geteuid() == 0 else "~/.local/share/mlship/standalone"
    p.add_argument(
        "--state",
        default=EnvDefault("STATE", default_state),
        help="where Redis data, the registry, keys, the example repo and logs live",
    )
    p.add_argument(
        "--port",
        type=int,
        default=EnvDefault("PORT", 8000, int),
        help="port of the web app (status page, API, webhook)",
    )
    p.add_argument("--workers", type=int, default=1, help="number of build workers")
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
        Path(args.state).expanduser(), say=say, web_port=args.port, redis_url=os.environ.get("REDIS_URL")
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


def _banner(stack: object) -> None:
    from orchestrator.devstack.stack import REPO_NAME, Stack

    assert isinstance(stack, Stack)
    lines = [
        "",
        f"  status page    {stack.url}/",
        f"  webhook URL    {stack.url}/webhooks/github   (content type application/json)",
        f"  webhook secret {stack.webhook_secret}",
        f"  API token      {stack.api_token}",
        f"  repository     {REPO_NAME}  ←  {stack.origin.url if stack.origin else ''}",
        f"  config         {stack.config_path}",
        f"  logs           {stack.state / 'logs'}",
        "",
    ]
    print("\n".join(lines), file=sys.stdout, flush=True)
