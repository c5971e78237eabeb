"""Notifications out: queued when a build finishes, sent by a dispatcher thread in every worker.

Why an outbox in Redis and a thread, not an RQ job: the worker is an RQ ``SimpleWorker`` that runs
one job at a time, so a notification job would wait behind the next hour-long build; and RQ's
retry intervals need RQ's scheduler, which this worker does not run. Why not an in-memory queue:
a worker crash would lose what it holds. So ``notify_finished`` (the build's last act, one Redis
call) writes a record per (event, target) into the build's notification hash and the outbox;
the ``Dispatcher`` of any worker claims due records with a lease, sends, and records the
outcome; a failed attempt is due again after a doubling backoff; a claim whose worker died
expires and another worker sends it (at least once: receivers may see a repeat, with the same
``X-Mlship-Delivery`` id). Nothing here can fail or delay a build.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from orchestrator import background
from orchestrator.build.log import Masker
from orchestrator.config import NotifyTarget, Settings
from orchestrator.errors import ConfigError
from orchestrator.models import Build
from orchestrator.notify import payloads
from orchestrator.notify.events import build_events, message
from orchestrator.notify.send import SendFailed, post, send_email
from orchestrator.store import Store
from orchestrator.store.notifications import Notification

log = logging.getLogger(__name__)
LEASE = 120.0  # seconds a claim lasts; far more than one attempt can take (10 s timeouts)
POLL = 0.5
MAX_BACKOFF = 300.0


def plan(settings: Settings, build: Build) -> list[Notification]:
    """The notification records of a finished build: each event for each target that wants it."""
    mask = Masker(settings.secret_values())
    page = f"{settings.public_url}/builds/{build.id}"
    out: list[Notification] = []
    for event in build_events(build):
        data = message(build, event, page, mask)
        for name, target in sorted(settings.notifications.items()):
            if target.wants(event.name, build.repo):
                out.append(
                    Notification(
                        build.id, event.name, event.key, name, target.kind, data, max_attempts=target.attempts
                    )
                )
    return out


def notify_finished(settings: Settings, store: Store, build: Build) -> int:
    """Queue the notifications of a finished build; returns how many are new. Never raises.

    The events come from the build's record as stored (the runner and the janitor may both report
    one build; whichever finished it decides its outcome, and each record is created once)."""
    if not settings.notifications:
        return 0
    try:
        final = store.get_build(build.id)
        if not final.status.finished:
            return 0
        records = plan(settings, final)
        return store.notifications.add(records) if records else 0
    except Exception:  # notifications are a courtesy: a build's record is already final
        log.exception("could not queue the notifications of build %s", build.id)
        return 0


def backoff(target: NotifyTarget, attempts: int) -> float:
    """Seconds to wait after failed attempt number ``attempts`` (1, 2, ...)."""
    return float(min(target.backoff * 2 ** (attempts - 1), MAX_BACKOFF))


class Dispatcher:
    """Claims due notifications, sends each, records the outcome (see the module docstring)."""

    def __init__(
        self, settings: Settings, store: Store, clock: Callable[[], float] = time.time, lease: float = LEASE
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.lease = lease
        self.mask = Masker(settings.secret_values())

    def run_once(self) -> list[Notification]:
        """One pass: every notification due now, sent (or rescheduled); returns them."""
        claimed = self.store.notifications.claim(self.clock(), self.lease)
        for n in claimed:
            self.deliver(n)
        return claimed

    def deliver(self, n: Notification) -> None:
        target = self.settings.notifications.get(n.target)
        n.attempts += 1
        try:
            if target is None:
                raise SendFailed(
                    f"target {n.target!r} is no longer in the server configuration", permanent=True
                )
            self._send(target, n)
        except SendFailed as exc:
            self._failed(n, target, self.mask(exc.reason), exc.permanent)
        except ConfigError as exc:  # a secret is not set: the operator must act, retrying cannot help
            self._failed(n, target, self.mask(str(exc)), permanent=True)
        except Exception as exc:  # a bug must not keep the claim forever: count it as an attempt
            log.exception(
                "build %s: sending the %s notification to %s crashed", n.build_id, n.event, n.target
            )
            self._failed(
                n, target, self.mask(f"internal error: {type(exc).__name__}: {exc}"), permanent=False
            )
        else:
            n.status, n.last_error, n.next_attempt_at = "sent", "", None
            log.info("build %s: %s notification sent to %s", n.build_id, n.event, n.target)
        self.store.notifications.save(n)

    def _failed(self, n: Notification, target: NotifyTarget | None, reason: str, permanent: bool) -> None:
        n.last_error = reason
        if permanent or target is None or n.attempts >= n.max_attempts:
            n.status, n.next_attempt_at = "failed", None
            log.warning(
                "build %s: %s notification to %s failed after %d attempt(s): %s",
                n.build_id,
                n.event,
                n.target,
                n.attempts,
                reason,
            )
        else:
            n.status, n.next_attempt_at = "retrying", self.clock() + backoff(target, n.attempts)

    def _send(self, target: NotifyTarget, n: Notification) -> None:
        secrets = self.settings.secrets
        purpose = f"notification target {n.target}"
        if target.kind == "email":
            password = secrets.require(target.password_secret, purpose) if target.password_secret else ""
            mail = payloads.email_message(n.message, target.sender, target.to)
            send_email(
                mail,
                target.smtp_host,
                target.smtp_port,
                starttls=target.starttls,
                username=target.username,
                password=password,
            )
            return
        url = secrets.require(target.url_secret, purpose) if target.url_secret else target.url
        if target.kind == "slack":
            post(
                url,
                payloads.slack_body(n.message),
                {"Content-Type": "application/json", "User-Agent": "mlship"},
            )
            return
        key = secrets.require(target.secret, purpose).encode()
        timestamp = int(self.clock())
        body = payloads.webhook_body(n.message, n.id, timestamp)
        post(url, body, payloads.webhook_headers(n.message, n.id, key, timestamp, body))


def start(settings: Settings, store: Store, interval: float = POLL) -> threading.Event:
    """Run the dispatcher in a daemon thread (when targets are configured); set the event to stop."""
    stop = threading.Event()
    if not settings.notifications:
        return stop
    dispatcher = Dispatcher(settings, store)
    return background.every(interval, dispatcher.run_once, "notify")
