"""``mlship worker [--burst]``: run builds from the queue (and the janitor for lost ones)."""

from __future__ import annotations

import argparse

from orchestrator.cli import command
from orchestrator.config import load_settings


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")


@command("worker", "run builds from the queue", _configure)
def worker(args: argparse.Namespace) -> int:
    from orchestrator.build.worker import work

    work(load_settings(), burst=args.burst)
    return 0
