"""Service settings, read once from the environment at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MODEL_PATH = "/models/model.skops"


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use 1/0)")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the app can be told; ``from_env`` documents the variable names."""

    model_path: str = DEFAULT_MODEL_PATH
    model_sha256: str | None = None
    allow_unpinned_pickle: bool = False
    trusted_types: tuple[str, ...] = ()
    max_rows: int = 10_000
    # 10,000 rows as objects are ~4.5 MB of JSON; 16 MB leaves room for pretty-printed bodies.
    max_body_bytes: int = 16 * 1024 * 1024
    fastpath: bool = True
    # Above ~200 rows sklearn's vectorised predict beats the numpy tree walk (measured).
    fastpath_max_rows: int = 128
    warm_up: bool = True
    # Large batches are split by rows over this many threads (sklearn's tree walk releases the
    # GIL). Each row's arithmetic is unchanged, so results stay bit-identical to predict().
    batch_threads: int = min(4, os.cpu_count() or 1)
    batch_parallel_min_rows: int = 2000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        sha = (env.get("MODEL_SHA256") or "").strip().lower() or None
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise SettingsError("MODEL_SHA256 must be 64 hex digits")
        types = tuple(t.strip() for t in env.get("MODEL_TRUSTED_TYPES", "").split(",") if t.strip())
        return cls(
            model_path=env.get("MODEL_PATH") or DEFAULT_MODEL_PATH,
            model_sha256=sha,
            allow_unpinned_pickle=_flag(env, "ALLOW_UNPINNED_PICKLE"),
            trusted_types=types,
            max_rows=_int(env, "MAX_ROWS", cls.max_rows),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", cls.max_body_bytes),
            fastpath=_flag(env, "FASTPATH", True),
            fastpath_max_rows=_int(env, "FASTPATH_MAX_ROWS", cls.fastpath_max_rows, minimum=0),
            batch_threads=_int(env, "BATCH_THREADS", cls.batch_threads),
        )
