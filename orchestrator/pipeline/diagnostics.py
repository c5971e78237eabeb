"""Errors of a pipeline, collected with their file, line and key, raised as one PipelineError."""

from __future__ import annotations

from collections.abc import Iterable

import yaml

from orchestrator.errors import PipelineError
from orchestrator.masking import Masker

Path_ = tuple[str | int, ...]


def _fmt_path(path: Iterable[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class Errors:
    """Collects (line, path, message) and raises one PipelineError naming file, line and key."""

    def __init__(self, filename: str, root: yaml.Node | None = None) -> None:
        self.filename = filename
        self.root = root
        self.items: list[tuple[int | None, str, str]] = []
        self.mask = Masker()  # the secrets substituted so far: an error message may quote a value

    def add(self, message: str, path: Path_ = (), line: int | None = None, key_line: bool = False) -> None:
        if line is None and self.root is not None:
            line = _line_of(self.root, path, key_line)
        self.items.append((line, _fmt_path(path), message))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = []
        for line, key, msg in self.items:
            where = f"{self.filename}:{line}" if line else self.filename
            lines.append(self.mask(f"{where}: {key}: {msg}" if key else f"{where}: {msg}"))
        first = self.items[0]
        raise PipelineError(
            "\n".join(lines), file=self.filename, line=first[0], key=self.mask(first[1]), errors=lines
        )


def _line_of(root: yaml.Node, path: Path_, key_line: bool) -> int | None:
    """The 1-based line of the node at ``path`` (the deepest part of it that exists)."""
    node = root
    line = node.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    line = (k if key_line and part == path[-1] else v).start_mark.line + 1
                    node = v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
