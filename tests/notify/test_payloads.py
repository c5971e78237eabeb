"""Pure parts of notifications, table-driven: events read from build records, payloads per target,
the HMAC signature and its verification, configuration errors."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from orchestrator.config import NotifyTarget, Schedule, load_settings
from orchestrator.errors import ConfigError
from orchestrator.models import Build, BuildStatus, StepRecord, StepStatus
from orchestrator.notify import payloads
from orchestrator.notify.dispatch import backoff
from orchestrator.notify.events import build_events, message

GATE = {
    "passed": False,
    "checks": [
        {"name": "r2 >= 0.8", "passed": False, "detail": "0.71 < 0.8"},
        {"name": "mae <= 30000", "passed": True, "detail": "21000"},
    ],
}


def build(status: BuildStatus, steps: list[StepRecord] = (), **kw: Any) -> Build:  # type: ignore[assignment]
    return Build(
        id=7,
        number=3,
        repo="acme/churn",
        sha="0123456789abcdef" * 2 + "01234567",
        ref="refs/heads/main",
        branch="main",
        trigger=kw.pop("trigger", "push"),
        status=status,
        steps=list(steps),
        **kw,
    )


def step(kind: str, status: StepStatus = StepStatus.SUCCESS, name: str = "", **details: Any) -> StepRecord:
    return StepRecord(name=name or kind, kind=kind, status=status, details=details)


@pytest.mark.parametrize(
    ("b", "expected"),
    [
        (build(BuildStatus.SUCCESS), [("build.success", "build", "acme/churn #3 success", "")]),
        (
            build(BuildStatus.FAILED, error="step 'tests' failed"),
            [("build.failed", "build", "acme/churn #3 failed", "step 'tests' failed")],
        ),
        (
            build(BuildStatus.ERROR, error="worker lost"),
            [("build.error", "build", "acme/churn #3 error", "worker lost")],
        ),
        (build(BuildStatus.CANCELLED), [("build.cancelled", "build", "acme/churn #3 cancelled", "")]),
        (build(BuildStatus.SUPERSEDED), []),
        (
            build(
                BuildStatus.SUCCESS,
                [
                    step(
                        "deploy",
                        name="deploy-qa",
                        environment="qa",
                        outcome="deployed",
                        image="r/churn@sha256:ab",
                    ),
                    step("deploy", name="deploy-prod", environment="prod", outcome="awaiting promote"),
                ],
            ),
            [
                ("build.success", "build", "acme/churn #3 success", ""),
                ("deploy", "deploy:qa", "acme/churn #3 deployed to qa", "image r/churn@sha256:ab"),
            ],
        ),
        (
            build(
                BuildStatus.FAILED,
                [step("deploy", StepStatus.FAILED, environment="qa", outcome="failed")],
                error="health check failed",
            ),
            [("build.failed", "build", "acme/churn #3 failed", "health check failed")],
        ),
        (
            build(
                BuildStatus.FAILED,
                [step("model_check", StepStatus.FAILED, name="gate", gate=GATE)],
                error="g",
            ),
            [
                ("build.failed", "build", "acme/churn #3 failed", "g"),
                (
                    "gate.stopped",
                    "gate.stopped:gate",
                    "acme/churn #3: model gate 'gate' stopped the model",
                    "r2 >= 0.8: 0.71 < 0.8",
                ),
            ],
        ),
        (
            build(
                BuildStatus.SUCCESS,
                [step("rollback", environment="prod", outcome="deployed", image="r/c:1")],
                trigger="rollback",
                deploys={"source_number": 2},
            ),
            [
                ("build.success", "build", "acme/churn #3 success", ""),
                ("rollback", "rollback:prod", "acme/churn #3: prod rolled back to build #2", "image r/c:1"),
            ],
        ),
    ],
)
def test_events_are_read_from_the_build_record(b: Build, expected: list[tuple[str, str, str, str]]) -> None:
    assert [(e.name, e.key, e.title, e.detail) for e in build_events(b)] == expected


def msg(**kw: Any) -> dict[str, Any]:
    b = build(BuildStatus.FAILED, error="step 'tests' failed", author="dana", message="Fix <b> & co\nbody")
    (event,) = build_events(b)
    return {**message(b, event, "http://mlship.test/builds/7", lambda s: s), **kw}


def test_message_carries_the_build_and_masks_every_string() -> None:
    b = build(BuildStatus.FAILED, error="token abc123 leaked", message="uses abc123")
    (event,) = build_events(b)
    m = message(b, event, "http://x/builds/7", lambda s: s.replace("abc123", "***"))
    assert m["detail"] == "token *** leaked" and m["build"]["error"] == "token *** leaked"
    assert m["build"]["message"] == "uses ***"
    assert (m["event"], m["url"], m["build"]["number"], m["build"]["sha"][:7]) == (
        "build.failed",
        "http://x/builds/7",
        3,
        "0123456",
    )


def test_slack_payload_text_and_blocks() -> None:
    assert payloads.slack_payload(msg()) == {
        "text": "acme/churn #3 failed",
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*<http://mlship.test/builds/7|acme/churn #3 failed>*\nstep 'tests' failed",
                },
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "acme/churn · main · 0123456 · trigger push"}],
            },
            {"type": "context", "elements": [{"type": "plain_text", "text": "Fix &lt;b&gt; &amp; co"}]},
        ],
    }


@pytest.mark.parametrize(
    ("detail", "shown"),
    [
        ("<!channel> ping", "&lt;!channel&gt; ping"),
        ("a & b", "a &amp; b"),
        ("<http://evil|click>", "&lt;http://evil|click&gt;"),
    ],
)
def test_slack_escapes_control_characters(detail: str, shown: str) -> None:
    text = payloads.slack_payload(msg(detail=detail))["blocks"][0]["text"]["text"]
    assert text.endswith("\n" + shown)


def test_webhook_body_and_headers() -> None:
    m = msg(environment="qa")
    body = payloads.webhook_body(m, "7-build-ops", 1_700_000_000)
    data = json.loads(body)
    assert (data["id"], data["timestamp"], data["event"], data["environment"]) == (
        "7-build-ops",
        1_700_000_000,
        "build.failed",
        "qa",
    )
    headers = payloads.webhook_headers(m, "7-build-ops", b"k3y", 1_700_000_000, body)
    expected = hmac.new(b"k3y", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers == {
        "Content-Type": "application/json",
        "User-Agent": "mlship",
        "X-Mlship-Event": "build.failed",
        "X-Mlship-Delivery": "7-build-ops",
        "X-Mlship-Timestamp": "1700000000",
        "X-Mlship-Signature": "sha256=" + expected,
    }


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "signature"),
    [
        (b"k", 0, b"", "sha256=" + hmac.new(b"k", b"0.", hashlib.sha256).hexdigest()),
        (
            b"secret",
            1700000000,
            b'{"a":1}',
            "sha256=" + hmac.new(b"secret", b'1700000000.{"a":1}', hashlib.sha256).hexdigest(),
        ),
    ],
)
def test_sign(secret: bytes, timestamp: int, body: bytes, signature: str) -> None:
    assert payloads.sign(secret, timestamp, body) == signature


NOW = 1_700_000_000
GOOD = {"X-Mlship-Timestamp": str(NOW), "X-Mlship-Signature": payloads.sign(b"k", NOW, b"{}")}


@pytest.mark.parametrize(
    ("headers", "body", "now", "ok"),
    [
        (GOOD, b"{}", NOW, True),
        (GOOD, b"{}", NOW + 299, True),
        (GOOD, b"{}", NOW + 301, False),  # replayed later
        (GOOD, b"{}", NOW - 301, False),
        (GOOD, b"{ }", NOW, False),  # body changed
        ({**GOOD, "X-Mlship-Timestamp": str(NOW + 1)}, b"{}", NOW, False),  # timestamp changed
        ({"X-Mlship-Signature": GOOD["X-Mlship-Signature"]}, b"{}", NOW, False),
        ({**GOOD, "X-Mlship-Timestamp": "soon"}, b"{}", NOW, False),
        ({"X-Mlship-Timestamp": str(NOW)}, b"{}", NOW, False),
    ],
)
def test_verify(headers: dict[str, str], body: bytes, now: float, ok: bool) -> None:
    assert payloads.verify(b"k", headers, body, now) is ok


def test_email_message() -> None:
    mail = payloads.email_message(msg(environment="qa"), "mlship@example.com", ("a@x.org", "b@x.org"))
    assert (mail["From"], mail["To"], mail["Subject"]) == (
        "mlship@example.com",
        "a@x.org, b@x.org",
        "[mlship] acme/churn #3 failed",
    )
    assert mail.get_content() == (
        "acme/churn #3 failed\n\nstep 'tests' failed\n\n"
        "Repository:  acme/churn\nBranch:      main\n"
        "Commit:      0123456789abcdef0123456789abcdef01234567  Fix <b> & co\n"
        "Trigger:     push\nStatus:      failed\nEnvironment: qa\n\n"
        "Build page: http://mlship.test/builds/7\n"
    )


@pytest.mark.parametrize(
    ("attempts", "wait"), [(1, 2.0), (2, 4.0), (3, 8.0), (8, 256.0), (9, 300.0), (20, 300.0)]
)
def test_backoff_doubles_up_to_five_minutes(attempts: int, wait: float) -> None:
    assert backoff(NotifyTarget(kind="slack", url_secret="S"), attempts) == wait


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"kind": "slack"}, "a slack target needs url_secret"),
        ({"kind": "webhook", "url": "http://x"}, "a webhook target needs secret"),
        ({"kind": "webhook", "secret": "K"}, "a webhook target needs url (or url_secret)"),
        ({"kind": "email", "smtp_host": "h"}, "an email target needs sender, to"),
        ({"kind": "sms"}, "key 'notifications.t.kind': Input should be 'slack', 'webhook' or 'email'"),
        ({"kind": "slack", "url_secret": "S", "events": ["deployed"]}, "unknown events ['deployed']"),
        (
            {"kind": "slack", "url_secret": "S", "attempts": 0},
            "key 'notifications.t.attempts': Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_targets_are_refused_with_the_key(tmp_path: Any, spec: dict[str, Any], error: str) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(json.dumps({"notifications": {"t": spec}}))
    with pytest.raises(ConfigError) as exc:
        load_settings({"ORCHESTRATOR_CONFIG": str(path)}, validate=False)
    assert error in str(exc.value)


@pytest.mark.parametrize(
    ("events", "expanded"),
    [
        (["build.finished"], ("build.success", "build.failed", "build.error", "build.cancelled")),
        (
            ["all"],
            (
                "build.success",
                "build.failed",
                "build.error",
                "build.cancelled",
                "deploy",
                "gate.stopped",
                "rollback",
            ),
        ),
        (["deploy", "deploy", "rollback"], ("deploy", "rollback")),
    ],
)
def test_event_groups(events: list[str], expanded: tuple[str, ...]) -> None:
    assert NotifyTarget(kind="slack", url_secret="S", events=tuple(events)).events == expanded


def test_notification_secrets_are_masked_in_logs() -> None:
    settings = load_settings({}, validate=False)
    assert settings.secret_values() == []
    from orchestrator.config import Secrets, Settings

    s = Settings(
        notifications={"t": NotifyTarget(kind="webhook", url_secret="U", secret="K")},
        secrets=Secrets(env={"U": "http://hook/x", "K": "signing-key"}),
    )
    assert set(s.secret_values()) == {"http://hook/x", "signing-key"}


def test_schedule_cron_is_checked() -> None:
    with pytest.raises(ValueError, match="five fields, minute hour day month weekday"):
        Schedule(repo="acme/churn", cron="every night")
