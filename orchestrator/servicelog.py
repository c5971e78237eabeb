"""Structured service logs: one JSON object per line, secrets masked.

Use ``event(logger, "delivery", id=..., verdict=...)``: the fields become keys of the line. Values
are JSON-escaped (a hostile branch name cannot forge a second line), and every known secret value
is replaced by ``***`` in the finished line as a last line of defence.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

import orjson

from orchestrator.masking import MASK, Masker

__all__ = ["MASK", "JsonFormatter", "configure", "event", "get", "now_ms"]

LOGGER = "orchestrator"
_FIELDS = "mlship_fields"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, then the event's fields."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # The same masker as the build log: plain, per-line, base64 and JSON-escaped forms.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.mask = Masker(self.secrets)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return self.mask(orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode())


def configure(secrets: Iterable[str] = (), stream: IO[str] | None = None, level: int = logging.INFO) -> None:
    """Send the orchestrator's logs to ``stream`` (stderr) as JSON lines; idempotent per process."""
    logger = logging.getLogger(LOGGER)
    for h in list(logger.handlers):
        if getattr(h, "mlship", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    handler.mlship = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # No line here or in gunicorn's and RQ's formats shows the caller or the thread, so records need
    # not collect them (the logging HOWTO's "Optimization" settings; process ids stay, gunicorn's
    # format prints them): together with orjson, a tenth of a webhook delivery's CPU.
    logging.logThreads = logging.logMultiprocessing = False
    logging._srcfile = None


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event; ``fields`` become keys of the JSON line."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_FIELDS: {"event": name, **fields}})


def get(name: str) -> logging.Logger:
    """A child of the orchestrator logger, e.g. ``get("webhooks")``."""
    return logging.getLogger(f"{LOGGER}.{name}")


def now_ms(start: float) -> float:
    """Milliseconds since ``start`` (a time.perf_counter() value), rounded for logs."""
    return round((time.perf_counter() - start) * 1000, 2)
