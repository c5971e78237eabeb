"""The fence: before each remote change on a host, the deploy checks that its build still holds the
build lease (by the runner's token) and the environment lock, in one Redis round trip.

A worker that stalled past its lease (SIGSTOP, swap, a partition) has been marked lost by the
janitor, its lock freed and maybe taken by the next deploy. When it wakes, its next check fails and
it raises ``Fenced``: no further change on any host, no rollback (the new holder owns the hosts).
The window left is one command: a stall between a passed check and the command it guards.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestrator.errors import Fenced, StoreUnavailable

if TYPE_CHECKING:
    from orchestrator.store import Store


class Fence:
    """``check(what)`` before each remote change; raises Fenced once the lease or a lock is gone.

    ``token`` "" (a deploy run without a runner, as some tests do) checks the locks only. Once fenced,
    every later check fails at once without asking Redis again. ``checks`` counts the round trips.
    """

    def __init__(self, store: Store, build_id: int, token: str, locks: Sequence[tuple[str, str]]) -> None:
        self.store = store
        self.build_id = build_id
        self.token = token
        self.locks = list(locks)
        self.checks = 0
        self.fenced: Fenced | None = None
        self._lock = threading.Lock()  # hosts of one batch check from their own threads

    def check(self, what: str) -> None:
        if self.fenced is not None:
            raise self.fenced
        with self._lock:
            self.checks += 1
        try:
            answer = self.store.fence_check(self.build_id, self.token, self.locks)
        except StoreUnavailable as exc:
            # We cannot show we still own the build: the safe side is to change nothing.
            answer = f"cannot confirm the lease and lock (Redis unreachable: {exc})"
        if answer != "ok":
            self.fenced = Fenced(
                f"fenced before {what}: {answer}; this worker stalled past its lease or lost its lock, "
                "so it stopped and changed nothing more (the janitor marked the build lost; the "
                "next deploy of the environment owns its hosts)",
                build=self.build_id,
                reason=answer,
            )
            raise self.fenced

    def holds(self) -> bool:
        """True if the check passes now (for deciding whether an undo is still ours to do)."""
        try:
            self.check("rolling back")
        except Fenced:
            return False
        return True


class NoFence(Fence):
    """For code that drives a host outside a deploy (nothing to hold)."""

    def __init__(self) -> None:
        super().__init__(None, 0, "", [])  # type: ignore[arg-type]

    def check(self, what: str) -> None:
        return None
