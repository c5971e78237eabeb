"""The store's Lua scripts, kept as ``lua/<name>.lua`` (package data) and loaded by name."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def lua(name: str) -> str:
    """The source of ``lua/<name>.lua``."""
    return files("orchestrator.store").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
