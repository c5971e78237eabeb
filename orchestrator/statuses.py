"""Commit statuses back to GitHub (pending / success / failure with a link to the build page).

Placeholder with the final signature; the web/API issue implements it. Failures to report never
fail a build: they are logged.
"""

from __future__ import annotations

from .config import Settings
from .models import Build


def report(settings: Settings, build: Build, state: str, description: str) -> None:
    """Report ``state`` (pending|success|failure|error) for the build's commit, if a token is set."""
    return None
