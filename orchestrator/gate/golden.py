"""The golden set: labelled rows from a CSV or JSON-lines file in the repository.

The columns come from the file: the features are every column but ``target``, in the file's order.
CSV cells that read as numbers become numbers (services expect ``3``, not ``"3"``); JSON lines keep
their JSON types. Parquet is not read: it would pull pyarrow (~100 MB) into the worker for a format
``pandas.read_parquet(...).to_json(orient="records", lines=True)`` converts in one line.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ROWS = 100_000


class GoldenError(ValueError):
    """The golden set cannot be used (the message names the file, the line and what to fix)."""


@dataclass(frozen=True)
class GoldenSet:
    name: str
    features: tuple[str, ...]
    rows: list[dict[str, Any]]  # feature values by name, one dict per row
    labels: list[Any]
    lines: list[int]  # the file's line of each row (for error messages)

    def where(self, i: int) -> str:
        return f"row {i} ({self.name} line {self.lines[i]})"

    def matrix(self) -> list[list[Any]]:
        return [[r[f] for f in self.features] for r in self.rows]


def cell(text: str) -> Any:
    """A CSV cell as the JSON value a service expects: int, float, or the string itself."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def read_golden(path: Path, target: str, name: str | None = None) -> GoldenSet:
    """Read ``path`` (.csv, or .jsonl/.ndjson) with the label in column ``target``."""
    name = name or path.name
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenError(f"cannot read the golden set {name}: {exc}") from None
    if path.suffix in (".jsonl", ".ndjson"):
        header, records = _json_lines(text, name)
    else:
        header, records = _csv(text, name)
    if target not in header:
        raise GoldenError(
            f"{name}: the target column '{target}' is not in the golden set; its columns: {', '.join(header)}"
        )
    features = tuple(c for c in header if c != target)
    if not features:
        raise GoldenError(f"{name}: no feature columns besides the target '{target}'")
    if not records:
        raise GoldenError(f"{name}: the golden set has no rows")
    if len(records) > MAX_ROWS:
        raise GoldenError(f"{name}: {len(records)} rows; the gate reads at most {MAX_ROWS}")
    rows = [{f: r[f] for f in features} for _, r in records]
    return GoldenSet(name, features, rows, [r[target] for _, r in records], [n for n, _ in records])


def _csv(text: str, name: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise GoldenError(f"{name}: empty file; the first line names the columns")
    records = []
    for values in reader:
        if not values:
            continue
        if len(values) != len(header):
            raise GoldenError(
                f"{name} line {reader.line_num}: {len(values)} values for {len(header)} columns"
            )
        records.append((reader.line_num, {c: cell(v) for c, v in zip(header, values, strict=True)}))
    return header, records


def _json_lines(text: str, name: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    header: list[str] = []
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise GoldenError(f"{name} line {n}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise GoldenError(f"{name} line {n}: each line must be one JSON object (a row)")
        if not header:
            header = list(row)
        elif set(row) != set(header):
            missing, extra = sorted(set(header) - set(row)), sorted(set(row) - set(header))
            raise GoldenError(
                f"{name} line {n}: columns differ from line 1 (missing {missing}, extra {extra})"
            )
        records.append((n, row))
    return header, records
