"""One masker for everything that can carry a secret: the build log, the service log, build and step
errors, step details, commit status descriptions.

A secret is replaced by ``***`` in its plain form, each line of a multi-line secret (a PEM key), its
base64 forms (at each byte alignment, standard and URL-safe) and its JSON-escaped form (a service
log line is JSON). Values shorter than MIN_SECRET_LEN are ignored: they would mask ordinary text
everywhere and hide nothing.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
MIN_SECRET_LEN = 3


def _b64_forms(value: bytes) -> set[str]:
    """The base64 text of ``value`` at each of the 3 byte alignments it may have inside a longer blob."""
    whole = base64.b64encode(value).decode()
    forms: set[str] = {whole, whole.rstrip("=")}
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + value).decode().rstrip("=")
        start = (4 * k + 2) // 3
        end = (k + len(value)) * 8 // 6
        part = enc[start:end]
        if len(part) >= 4:
            forms.add(part)
    return forms | {f.replace("+", "-").replace("/", "_") for f in forms}


class Masker:
    """Replaces every known secret value (and its lines, base64 and JSON forms) with ***."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._needles: set[str] = set()
        self._re: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        for secret in secrets:
            if not secret:
                continue
            parts = {secret, secret.strip(), *(line.strip() for line in secret.splitlines())}
            for part in parts:
                if len(part) < MIN_SECRET_LEN:
                    continue
                # JSON-escaped as json (\u escapes) and as orjson (raw UTF-8) write it
                self._needles.update(
                    {part, json.dumps(part)[1:-1], json.dumps(part, ensure_ascii=False)[1:-1]}
                )
                self._needles.update(_b64_forms(part.encode()))
        ordered = sorted(self._needles, key=len, reverse=True)  # longest first: no partial leftovers
        self._re = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._re is not None

    def __call__(self, text: str) -> str:
        return self._re.sub(MASK, text) if self._re is not None else text

    def data(self, value: Any) -> Any:
        """``value`` with every string inside it (dict keys and values, list items) masked."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.data(v) for v in value)
        return value
