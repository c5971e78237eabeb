"""CLI entry point: ``mlship`` (``orchestrator`` is an alias). Commands register via ``command``.

Each module in this package (web.py, worker.py, validate.py, client.py, standalone.py) adds its
subcommands; ``main`` wires them into argparse.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.config import env_get
from orchestrator.errors import OrchestratorError

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]
COMMANDS: dict[str, tuple[str, Configure, Handler]] = {}
MODULES = ("web", "worker", "validate", "client", "standalone", "init")


@dataclass(frozen=True)
class EnvDefault:
    """An option's default from ``MLSHIP_<name>`` (or its deprecated ORCHESTRATOR_ name), else
    ``fallback``; read after parsing, so only the command that runs reads (and warns about) it."""

    name: str
    fallback: Any = None
    kind: Callable[[str], Any] = str

    def resolve(self) -> Any:
        raw = env_get(self.name)
        return self.fallback if raw is None or raw == "" else self.kind(raw)

    def __str__(self) -> str:  # shown by %(default)s in help
        return f"$MLSHIP_{self.name} or {self.fallback}"


def _resolve_defaults(args: argparse.Namespace) -> None:
    for key, value in vars(args).items():
        if isinstance(value, EnvDefault):
            setattr(args, key, value.resolve())


def _quiet_broken_pipe() -> int:
    """The reader went away (``mlship builds | head``): stop writing, without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    return 141  # 128 + SIGPIPE, as a shell tool killed by the signal reports


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
    parser = argparse.ArgumentParser(
        prog="mlship", description="mlship: merged pull request to a health-checked model in QA and Prod"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, configure, _) in sorted(COMMANDS.items()):
        configure(sub.add_parser(name, help=help_))
    args = parser.parse_args(argv)
    _resolve_defaults(args)
    try:
        code = COMMANDS[args.command][2](args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
