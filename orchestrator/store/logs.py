"""Build logs: one Redis stream per build, entries {step, stream, text, ts}."""

from __future__ import annotations

import time
from collections.abc import Iterable

from orchestrator.store.clients import StoreBase


class Logs(StoreBase):
    def append_log(self, build_id: int, lines: Iterable[tuple[str, str, str]]) -> None:
        """Append (step, stream, text) lines to the build's log stream, in one round trip."""
        with self.available():
            pipe = self.r.pipeline(transaction=False)
            now = f"{time.time():.3f}"
            for step, stream, text in lines:
                entry = {"step": step, "stream": stream, "text": text, "ts": now}
                pipe.xadd(self.k.build_log(build_id), entry)
            pipe.execute()

    def read_log(
        self,
        build_id: int,
        after: str = "0-0",
        count: int = 1000,
        block_ms: int | None = None,
    ) -> list[tuple[str, dict[str, str]]]:
        """Log entries after stream id ``after``; with ``block_ms``, wait for new ones."""
        key = self.k.build_log(build_id)
        with self.available():
            if block_ms is None:
                return list(self.r.xrange(key, min=f"({after}" if after != "0-0" else "-", count=count))
            res = self.r.xread({key: after}, count=count, block=block_ms)
        return list(res[0][1]) if res else []

    def log_text(self, build_id: int) -> str:
        """The whole log as plain text, one line per entry."""
        out: list[str] = []
        after = "0-0"
        while True:
            batch = self.read_log(build_id, after=after, count=5000)
            if not batch:
                return "".join(out)
            for entry_id, f in batch:
                out.append(f"[{f.get('step', '')}] {f.get('text', '')}\n")
                after = entry_id
