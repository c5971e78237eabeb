"""Build logs: secrets masked line by line, lines batched into the build's Redis stream.

``LogWriter.write`` accepts arbitrary chunks (docker output arrives in pieces), splits them into
lines, masks each complete line and queues it; a flusher thread sends a batch every
``flush_interval`` seconds or as soon as ``flush_bytes`` are pending, so a step that prints
megabytes costs a few hundred round trips, and a quiet step's last line still shows within 0.2 s.
If Redis is briefly unreachable, lines stay queued (up to ``max_pending_bytes``) and go out later.

A build's log is capped at ``max_bytes`` (the ``max_log_bytes`` setting) of line text, counted in
Redis across every writer of the build (``Store.append_log_capped``). Past it lines are dropped: once
Redis says the cap was reached, the writer drops further lines itself (no traffic for them) and
counts them; ``close`` appends the one marker line with the final count (``Store.close_log``).
"""

from __future__ import annotations

import contextlib
import threading
import time

from orchestrator.errors import StoreUnavailable
from orchestrator.masking import MASK, MIN_SECRET_LEN, Masker
from orchestrator.store import Store

__all__ = ["MASK", "MIN_SECRET_LEN", "LogWriter", "Masker"]


class LogWriter:
    """Line-oriented, masked, batched writer into ``store.append_log`` for one build.

    ``step`` names the step the lines belong to; the runner sets it before each step.
    """

    def __init__(
        self,
        store: Store,
        build_id: int,
        masker: Masker | None = None,
        *,
        flush_bytes: int = 256 * 1024,
        flush_interval: float = 0.2,
        max_line: int = 64 * 1024,
        max_pending_bytes: int = 64 * 1024 * 1024,
        max_bytes: int = 0,
    ) -> None:
        self.store = store
        self.build_id = build_id
        self.masker = masker or Masker()
        self.step = ""
        self.flush_bytes = flush_bytes
        self.flush_interval = flush_interval
        self.max_line = max_line
        self.max_pending_bytes = max_pending_bytes
        self._partial: dict[tuple[str, str], str] = {}
        self._pending: list[tuple[str, str, str]] = []
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.dropped = 0
        self.max_bytes = max_bytes  # the build's log cap (0: none)
        self._capped = False  # Redis dropped a line: the cap is reached, drop the rest here
        self._capped_lines = 0
        self._capped_bytes = 0
        self._thread = threading.Thread(target=self._run, name=f"log-{build_id}", daemon=True)
        self._thread.start()

    def write(self, text: str | bytes, stream: str = "stdout", step: str | None = None) -> None:
        """Add output; complete lines are masked and queued, a trailing partial line waits for more."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        key = (self.step if step is None else step, stream)
        buf = self._partial.get(key, "") + text.replace("\r\n", "\n")
        lines = buf.split("\n")
        rest = lines.pop()
        while len(rest) > self.max_line:  # a huge line without newline: ship it in pieces
            lines.append(rest[: self.max_line])
            rest = rest[self.max_line :]
        self._partial[key] = rest
        if lines:
            self._queue(key, lines)

    def line(self, text: str, stream: str = "system") -> None:
        """One complete line from the orchestrator itself (step started, exit code...)."""
        self._queue((self.step, stream), [text])

    def _queue(self, key: tuple[str, str], lines: list[str]) -> None:
        step, stream = key
        masked = [(step, stream, self.masker(line)) for line in lines]
        size = sum(len(t) for _, _, t in masked)
        if self._capped:
            with self._lock:
                self._capped_lines += len(masked)
                self._capped_bytes += sum(len(t.encode()) for _, _, t in masked)
            return
        with self._lock:
            self._pending.extend(masked)
            self._pending_bytes += size
            big = self._pending_bytes >= self.flush_bytes
        if big:
            self.flush()  # backpressure: a flood of output waits for Redis instead of eating memory

    def flush(self) -> None:
        """Send everything queued (complete lines only)."""
        with self._send_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                self._pending_bytes = 0
            for i in range(0, len(batch), 2000):
                chunk = batch[i : i + 2000]
                try:
                    _, dropped = self.store.append_log_capped(self.build_id, chunk, self.max_bytes)
                    self._capped = self._capped or dropped > 0
                except StoreUnavailable:
                    self._requeue(batch[i:])
                    return

    def _requeue(self, lines: list[tuple[str, str, str]]) -> None:
        with self._lock:
            self._pending[:0] = lines
            self._pending_bytes += sum(len(t) for _, _, t in lines)
            while self._pending_bytes > self.max_pending_bytes and self._pending:
                _, _, t = self._pending.pop(0)
                self._pending_bytes -= len(t)
                self.dropped += 1

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._pending:
                with contextlib.suppress(Exception):
                    self.flush()

    def close(self, timeout: float = 10.0) -> None:
        """Flush partial lines and everything queued; retry briefly if Redis is away."""
        for key, rest in list(self._partial.items()):
            if rest:
                self._queue(key, [rest])
        self._partial.clear()
        self._closed = True
        self._wake.set()
        self._thread.join(2)
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            if not self._pending or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        with contextlib.suppress(StoreUnavailable):  # the janitor writes the marker of a lost build
            self.store.close_log(
                self.build_id, self.max_bytes, self.step, self._capped_lines, self._capped_bytes
            )
