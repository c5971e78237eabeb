"""CLI entry point. Subcommands register themselves in COMMANDS via ``command``.

Each module in this package (web.py, worker.py, validate.py, client.py, standalone.py) adds its
subcommands; ``main`` wires them into argparse.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from orchestrator.errors import OrchestratorError

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]
COMMANDS: dict[str, tuple[str, Configure, Handler]] = {}
MODULES = ("web", "worker", "validate", "client", "standalone")


def command(name: str, help: str, configure: Configure | None = None) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = (help, configure or (lambda p: None), fn)
        return fn

    return register


def main(argv: list[str] | None = None) -> int:
    for mod in MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":
                raise
    parser = argparse.ArgumentParser(prog="orchestrator", description="ML model CI/CD orchestrator")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, configure, _) in sorted(COMMANDS.items()):
        configure(sub.add_parser(name, help=help_))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
