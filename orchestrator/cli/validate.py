"""``mlship validate pipeline.yaml``: the same checks the worker runs, from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.cli import command
from orchestrator.config import Allow
from orchestrator.errors import PipelineError
from orchestrator.pipeline import BUILTIN_VARS, MAX_BYTES, load_pipeline

PERMISSIONS = ("shell", "privileged", "host_mounts", "host_network")


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file", nargs="?", default="pipeline.yaml", help="the pipeline file (default: pipeline.yaml)"
    )
    p.add_argument(
        "--allow",
        action="append",
        choices=PERMISSIONS,
        default=[],
        help="a permission the repository has in the server configuration (repeatable)",
    )
    p.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="check ${VARS} against these server variables (the builtins are always known)",
    )


@command("validate", "check a pipeline.yaml and explain every problem", _configure)
def validate(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        with path.open("rb") as f:
            text = f.read(MAX_BYTES + 1).decode("utf-8", "replace")
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
        return 1
    variables = None
    if args.var:
        variables = {name: "x" for name in BUILTIN_VARS}
        for item in args.var:
            name, _, value = item.partition("=")
            variables[name] = value
    allow = Allow(**{p: True for p in args.allow})
    try:
        pipeline = load_pipeline(text, str(path), variables=variables, allow=allow)
    except PipelineError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(
        f"{path}: ok: {pipeline.name}, {len(pipeline.steps)} steps "
        f"({', '.join(f'{s.name}:{s.kind}' for s in pipeline.steps)}), "
        f"environments: {', '.join(pipeline.environments) or 'none'}"
    )
    return 0
