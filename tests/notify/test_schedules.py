"""Schedules with real Redis, a real git origin and RQ: a slot fires once however many schedulers
tick at once; missed slots collapse into the latest; the build says trigger ``schedule``."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator import create_app
from orchestrator.build.queue import build_queue
from orchestrator.build.schedules import Scheduler, latest_slot
from orchestrator.config import RepoConfig, Schedule, Secrets, Settings, load_settings
from orchestrator.devstack.services import GitOrigin
from orchestrator.errors import ConfigError
from orchestrator.store import Store

REPO = "acme/churn"


def at(hh: int, mm: int, ss: float = 0) -> float:
    return datetime(2026, 1, 5, hh, mm, tzinfo=UTC).timestamp() + ss


@pytest.mark.parametrize(
    ("cron", "now", "slot"),
    [
        ("* * * * *", at(10, 0, 30), at(10, 0)),
        ("* * * * *", at(10, 1), at(10, 1)),  # exactly on the slot: that slot
        ("* * * * *", at(10, 0, 59.999), at(10, 0)),
        ("0 3 * * *", at(10, 0), at(3, 0)),
        ("0 3 * * *", at(2, 59, 59), at(3, 0) - 86400),
        ("*/15 * * * *", at(10, 44, 59), at(10, 30)),
        ("0 0 * * 1", at(10, 0), at(0, 0)),  # 2026-01-05 is a Monday
    ],
)
def test_latest_slot(cron: str, now: float, slot: float) -> None:
    assert latest_slot(cron, now) == slot


@pytest.fixture
def origin(tmp_path: Path) -> GitOrigin:
    return GitOrigin(tmp_path / "git").create({"README.md": "churn\n"}, copy_example=False)


def make_settings(redis_url: str, tmp_path: Path, origin: GitOrigin, **schedules: Schedule) -> Settings:
    return Settings(
        redis_url=redis_url,
        workspace=tmp_path / "ws",
        repositories={REPO: RepoConfig(full_name=REPO, clone_url=origin.url)},
        secrets=Secrets(env={"GITHUB_WEBHOOK_SECRET": "whsec"}),
        schedules=schedules,
    )


def tick_together(schedulers: list[Scheduler], now: float) -> list[Any]:
    """Every scheduler ticks at the same instant (a barrier), as workers on one Redis would."""
    barrier = threading.Barrier(len(schedulers))
    results: list[Any] = []

    def run(s: Scheduler) -> None:
        barrier.wait()
        results.extend(s.tick(now))

    threads = [threading.Thread(target=run, args=(s,)) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_a_slot_fires_once_with_two_schedulers(redis_url: str, tmp_path: Path, origin: GitOrigin) -> None:
    settings = make_settings(redis_url, tmp_path, origin, nightly=Schedule(repo=REPO, cron="* * * * *"))
    queue = build_queue(settings)
    a, b = (Scheduler(settings, Store.from_url(redis_url), queue, owner=o) for o in ("w1", "w2"))

    assert tick_together([a, b], at(10, 0, 30)) == []  # first sight: starts from the next slot
    (build,) = tick_together([a, b], at(10, 1, 0.2))
    assert (build.trigger, build.branch, build.sha, build.repo) == ("schedule", "main", origin.head(), REPO)
    assert build.triggered_by == "schedule nightly at 2026-01-05T10:01Z"
    assert tick_together([a, b], at(10, 1, 40)) == []  # same slot: nothing more
    assert [x.number for x in tick_together([a, b], at(10, 2, 5))] == [2]
    assert queue.count == 2  # each build has its RQ job

    client = create_app(settings).test_client()
    listed = client.get("/api/v1/builds").get_json()["builds"]
    assert [(x["number"], x["trigger"]) for x in listed] == [(2, "schedule"), (1, "schedule")]
    assert '<td data-label="Trigger" class="small">schedule</td>' in client.get("/").get_data(as_text=True)


def test_missed_slots_fire_only_the_latest(redis_url: str, tmp_path: Path, origin: GitOrigin) -> None:
    settings = make_settings(redis_url, tmp_path, origin, often=Schedule(repo=REPO, cron="*/5 * * * *"))
    store = Store.from_url(redis_url)
    s = Scheduler(settings, store, build_queue(settings))
    s.tick(at(9, 58))
    fired = s.tick(at(10, 31))  # no worker from 09:58 to 10:31: slots 10:00 … 10:30 were missed
    assert [b.triggered_by for b in fired] == ["schedule often at 2026-01-05T10:30Z"]
    assert s.tick(at(10, 34)) == []
    assert store.schedules.state("often")["last_build"] == str(fired[0].id)


def test_a_missing_branch_is_recorded_not_built(redis_url: str, tmp_path: Path, origin: GitOrigin) -> None:
    settings = make_settings(
        redis_url, tmp_path, origin, gone=Schedule(repo=REPO, branch="retrain", cron="* * * * *")
    )
    store = Store.from_url(redis_url)
    s = Scheduler(settings, store, build_queue(settings))
    s.tick(at(10, 0))
    assert s.tick(at(10, 1)) == []
    assert store.schedules.state("gone")["last_error"] == (
        f"slot 2026-01-05T10:01Z: branch refs/heads/retrain does not exist in {REPO}"
    )
    assert store.list_builds()[1] == 0
    assert s.tick(at(10, 1, 30)) == []  # the slot is spent: no retry storm against the origin


def test_schedules_in_the_server_configuration(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(
        f"repositories:\n  {REPO}: {{clone_url: 'file:///x'}}\n"
        f"schedules:\n  nightly: {{repo: {REPO}, branch: main, cron: '0 3 * * *'}}\n"
    )
    settings = load_settings({"ORCHESTRATOR_CONFIG": str(path)}, validate=False)
    assert settings.schedules == {"nightly": Schedule(repo=REPO, branch="main", cron="0 3 * * *")}


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (
            "{repo: acme/other, cron: '0 3 * * *'}",
            "schedules.s: repository 'acme/other' is not in repositories",
        ),
        (
            f"{{repo: {REPO}, cron: '61 * * * *'}}",
            "key 'schedules.s.cron': Value error, '61 * * * *' is not a cron",
        ),
        (f"{{repo: {REPO}}}", "key 'schedules.s.cron': Field required"),
        (
            f"{{repo: {REPO}, branch: '-x', cron: '* * * * *'}}",
            "key 'schedules.s.branch': Value error, '-x' is not",
        ),
        (f"{{repo: {REPO}, branch: 'a..b', cron: '* * * * *'}}", "'a..b' is not a branch name like 'main'"),
    ],
)
def test_bad_schedules_are_refused(tmp_path: Path, spec: str, error: str) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(f"repositories:\n  {REPO}: {{clone_url: 'file:///x'}}\nschedules:\n  s: {spec}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings({"ORCHESTRATOR_CONFIG": str(path)}, validate=False)
    assert error in str(exc.value)
