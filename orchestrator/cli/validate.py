"""``mlship validate pipeline.yaml``: the same checks the worker runs, from the command line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from orchestrator.cli import command
from orchestrator.config import Allow, load_settings
from orchestrator.errors import ConfigError, PipelineError
from orchestrator.pipeline import BUILTIN_VARS, MAX_BYTES, load_pipeline
from orchestrator.pipeline.policy import Policy

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
    p.add_argument(
        "--secret",
        action="append",
        default=None,
        metavar="NAME",
        help="a secret name the repository may use (repeatable; without it or --repo any name but the "
        "server's own is accepted)",
    )
    p.add_argument(
        "--repo",
        metavar="OWNER/NAME",
        help="check against this repository's reach and allow in the server configuration "
        "(MLSHIP_CONFIG): secrets, volumes, networks, limits, deploy targets",
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
    try:
        policy = replace(_policy(args), resolved=variables is not None)
        pipeline = load_pipeline(text, str(path), variables=variables, policy=policy)
    except (PipelineError, ConfigError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(
        f"{path}: ok: {pipeline.name}, {len(pipeline.steps)} steps "
        f"({', '.join(f'{s.name}:{s.kind}' for s in pipeline.steps)}), "
        f"environments: {', '.join(pipeline.environments) or 'none'}"
    )
    return 0


def _policy(args: argparse.Namespace) -> Policy:
    """The repository's policy from the server configuration (--repo), else the fixed rules: the
    server's own secret names are known even without a configuration."""
    allow = Allow(**{p: True for p in args.allow})
    if not args.repo:
        return Policy.unknown(allow, args.secret)
    settings = load_settings(validate=False)
    repo = settings.repo(args.repo)
    if repo is None:
        known = ", ".join(sorted(settings.repositories)) or "none"
        raise ConfigError(f"--repo {args.repo}: not in the server configuration (repositories: {known})")
    policy = Policy.for_repo(settings, repo)
    return replace(policy, allow=repo.allow.model_copy(update=dict.fromkeys(args.allow, True)))
