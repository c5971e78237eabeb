"""Build logs: one Redis stream per build, entries {step, stream, text, ts}, capped per build."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from orchestrator.store.clients import StoreBase
from orchestrator.store.scripts import lua

MARKER = "log cap reached (max_log_bytes={cap}): {{lines}} more lines ({{bytes}} bytes) were dropped"


@dataclass(frozen=True)
class LogCap:
    """A build's log size and what its cap dropped."""

    bytes: int = 0
    dropped_lines: int = 0
    dropped_bytes: int = 0


class Logs(StoreBase):
    def append_log(self, build_id: int, lines: Iterable[tuple[str, str, str]]) -> None:
        """Append (step, stream, text) lines to the build's log stream, in one round trip (no cap:
        for the few lines the orchestrator itself writes, e.g. the janitor's)."""
        with self.available():
            pipe = self.r.pipeline(transaction=False)
            now = f"{time.time():.3f}"
            for step, stream, text in lines:
                entry = {"step": step, "stream": stream, "text": text, "ts": now}
                pipe.xadd(self.k.build_log(build_id), entry)
            pipe.execute()

    def append_log_capped(
        self, build_id: int, lines: list[tuple[str, str, str]], cap: int
    ) -> tuple[int, int]:
        """Append lines while the log's text stays within ``cap`` bytes (0: no cap), atomically across
        writers; past it lines are dropped and counted. Returns (lines added, lines dropped)."""
        keys = [self.k.build_log(build_id), self.k.build_log_cap(build_id)]
        args = [cap, f"{time.time():.3f}", *(x for line in lines for x in line)]
        with self.available():
            added, dropped = self.r.eval(lua("append_log_capped"), len(keys), *keys, *args)
        return int(added), int(dropped)

    def close_log(
        self, build_id: int, cap: int, step: str = "", dropped_lines: int = 0, dropped_bytes: int = 0
    ) -> LogCap:
        """Add what a writer dropped on its side; if the cap dropped anything, append the build's one
        marker line with the count so far (replacing an earlier one): one marker, the final count."""
        keys = [self.k.build_log(build_id), self.k.build_log_cap(build_id)]
        args = [dropped_lines, dropped_bytes, f"{time.time():.3f}", step, MARKER.format(cap=cap)]
        with self.available():
            lines, size, _ = self.r.eval(lua("close_log"), len(keys), *keys, *args)
        return LogCap(self.log_cap(build_id).bytes, int(lines), int(size))

    def log_cap(self, build_id: int) -> LogCap:
        with self.available():
            h = self.r.hgetall(self.k.build_log_cap(build_id))
        return LogCap(int(h.get("bytes", 0)), int(h.get("dropped_lines", 0)), int(h.get("dropped_bytes", 0)))

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

    def iter_log_text(self, build_id: int, chunk: int = 2000) -> Iterator[str]:
        """The whole log as plain text, one line per entry, read ``chunk`` entries a round trip:
        a 20 MB log is streamed, never held in memory at once."""
        after = "0-0"
        while True:
            batch = self.read_log(build_id, after=after, count=chunk)
            if not batch:
                return
            yield "".join(f"[{f.get('step', '')}] {f.get('text', '')}\n" for _, f in batch)
            after = batch[-1][0]

    def log_text(self, build_id: int) -> str:
        """The whole log as plain text (tests and small logs; the API streams ``iter_log_text``)."""
        return "".join(self.iter_log_text(build_id))
