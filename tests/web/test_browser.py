"""The pages in a real headless Chromium (Debian's chromium, driven by Playwright; no browser download):
the list, a running build whose log grows live over SSE, re-run, and an XSS attempt rendered as text.
Saves list.png and build.png to docs/screenshots/ when MLSHIP_SCREENSHOTS=1 (to refresh the README),
otherwise to a temporary directory, so a test run leaves the work tree clean."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.models import StepRecord, StepStatus

from .conftest import TOKEN, unavailable_browser

DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SHOTS = DOCS_SHOTS if os.environ.get("MLSHIP_SCREENSHOTS") == "1" else Path(tempfile.mkdtemp(prefix="shots-"))
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not shutil.which("chromium") and not Path(CHROMIUM).exists():
        unavailable_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=live_server.url)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert errors == [], errors  # no script errors on any page


def sign_in(page) -> None:
    page.goto("/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url("**/")


LOG = [
    ("checkout", "system", "checking out 3f2a9c1 from git@github.com:acme/house-price.git"),
    ("build", "system", "step build (docker_build) started"),
    ("build", "stdout", "Step 1/9 : ARG BASE_IMAGE=python:3.11-slim"),
    ("build", "stdout", "Step 2/9 : FROM python:3.11-slim"),
    ("build", "stdout", "Step 5/9 : RUN pip install --no-cache-dir -r inference/requirements.txt"),
    ("build", "stdout", "Successfully installed scikit-learn-1.5.2 numpy-2.1.3 skops-0.10.0 gunicorn-23.0.0"),
    ("build", "stdout", "Successfully built 8d1f0c2b7a44"),
    ("build", "system", "step build success (41.2s)"),
    ("test", "system", "step test (docker_run) started"),
    ("test", "stdout", "============================= test session starts =============================="),
    ("test", "stdout", "collected 48 items"),
    ("test", "stdout", "inference/tests/test_app.py ................                                [ 33%]"),
]


def seed_realistic(seed):
    seed.build(
        "success",
        message="Retrain on Q3 sales data",
        branch="main",
        author="alice",
        ago=86400 * 2,
        seconds=312,
        image="registry.local:5000/house-price:1",
        digest="sha256:" + "4e" * 32,
    )
    seed.build(
        "failed",
        message="Add garage_area feature",
        branch="feature/garage-area",
        author="bob",
        ago=7200,
        seconds=58,
        trigger="push",
        error="step test failed: exit code 1",
    )
    seed.build(
        "success",
        message="Pin scikit-learn to 1.5.2",
        branch="main",
        author="carol",
        ago=3600,
        seconds=287,
        image="registry.local:5000/house-price:3",
        digest="sha256:" + "a1" * 32,
    )
    seed.build(
        "cancelled",
        message="Try a deeper forest",
        branch="exp/depth-12",
        author="dave",
        ago=2400,
        seconds=12,
        trigger="manual",
        error="cancelled by API_TOKEN",
    )
    seed.build(
        "success",
        message="Validate input ranges in /predict",
        branch="main",
        author="alice",
        ago=1500,
        seconds=301,
        trigger="rerun",
        rerun_of=3,
    )
    now = time.time()
    steps = [
        StepRecord("build", "docker_build", StepStatus.SUCCESS, now - 65, now - 24),
        StepRecord("test", "docker_run", StepStatus.RUNNING, now - 23),
        StepRecord("push", "docker_push"),
        StepRecord("deploy-qa", "deploy"),
        StepRecord("deploy-prod", "deploy"),
    ]
    return seed.build(
        "running",
        message="Merge pull request #42 from acme/faster-predict\n\nVectorise it",
        branch="main",
        author="erin",
        ago=70,
        log=LOG,
        steps=steps,
    )


def test_list_live_log_rerun_and_screenshots(page, seed, rt):
    running = seed_realistic(seed)
    sign_in(page)

    # The list: every build, status colours, and a screenshot for the README.
    page.goto("/")
    rows = page.locator("tr.build-row")
    assert rows.count() == 6
    assert "Merge pull request #42 from acme/faster-predict" in rows.first.inner_text()
    assert page.locator(".status.s-running").count() == 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "list.png"), full_page=True)

    # Open the running build: the log so far, then lines that arrive while the page is open.
    page.click(f"tr[data-build='{running.id}'] td.num a")
    page.wait_for_url(f"**/builds/{running.id}")
    assert page.locator("#log .ln").count() == len(LOG)
    assert page.locator("#cancel-btn").is_visible() and page.locator("#rerun-btn").count() == 0

    later = [
        "inference/tests/test_model.py ..............                  [ 62%]",
        "inference/tests/test_validation.py ..................          [100%]",
        "=" * 30 + " 48 passed in 3.12s " + "=" * 30,
    ]

    def more_output() -> None:
        for text in later:
            time.sleep(0.4)
            rt.store.append_log(running.id, [("test", "stdout", text)])

    t = threading.Thread(target=more_output)
    t.start()
    page.locator("#log .ln", has_text="48 passed in 3.12s").wait_for(timeout=10000)
    t.join()
    assert page.locator("#log .ln").count() == len(LOG) + 3
    page.screenshot(path=str(SHOTS / "build.png"), full_page=True)

    # The build ends: the stream says so, the page drops the live badge and offers a re-run.
    steps = rt.store.get_build(running.id).steps
    steps[1].status, steps[1].finished_at = StepStatus.FAILED, time.time()
    steps[1].exit_code, steps[1].error = 1, "exit code 1"
    for s in steps[2:]:
        s.status = StepStatus.SKIPPED
    rt.store.update_build(
        running.id,
        status="failed",
        finished_at=time.time(),
        steps=steps,
        error="step test failed: exit code 1",
    )
    page.locator("#live-badge").wait_for(state="detached", timeout=10000)  # the stream's `end` event
    page.locator("#rerun-btn").wait_for(timeout=10000)
    assert page.locator("#summary .status").first.inner_text().strip().lower() == "failed"

    # Re-run: a new build appears (its page, then the list).
    page.click("#rerun-btn")
    page.locator(".flash", has_text="queued (re-run of build").wait_for()
    new_number = running.number + 1
    assert f"#{new_number}" in page.locator("h1").inner_text()
    page.goto("/")
    assert page.locator("tr.build-row").count() == 7
    assert page.locator("tr.build-row").first.locator(".status").inner_text().strip().lower() == "queued"


def test_list_refreshes_itself_when_a_build_appears(page, seed):
    seed.build("success", message="first")
    page.goto("/")
    assert page.locator("tr.build-row").count() == 1
    seed.build("queued", message="arrived while the page was open")
    page.locator("tr.build-row", has_text="arrived while the page was open").wait_for(timeout=10000)


def test_xss_in_a_commit_message_renders_as_text(page, seed):
    b = seed.build(
        "running", message=XSS, branch="<b>evil</b>", author="<i>mallory</i>", log=[("build", "stdout", XSS)]
    )
    page.goto("/")
    assert page.locator("td.commit .msg").first.inner_text() == XSS
    page.goto(f"/builds/{b.id}")
    assert XSS in page.locator("h1").inner_text()
    assert page.locator("#log .ln .text").first.inner_text() == XSS
    seed.rt.store.append_log(b.id, [("build", "stderr", '<img src=y onerror="window.__xss=3">')])
    page.locator("#log .ln", has_text="onerror").nth(1).wait_for(timeout=10000)  # arrived live, as text
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert page.locator("img").count() == 0 and page.locator("b", has_text="evil").count() == 0


def test_phone_layout_is_readable(browser, live_server, seed):
    seed_realistic(seed)
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, base_url=live_server.url
    )
    page = context.new_page()
    page.goto("/")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the list scrolls sideways on a phone ({width}px)"
    page.screenshot(path=str(SHOTS / "list-phone.png"))
    context.close()


def test_canary_table_and_screenshot(page, seed):
    """A canary rolled back at its first step, with the numbers of a bench/canary_bench.py run (the
    bad version, every 10th answer 5xx), as the build page shows it; saved as canary.png."""

    def side(req: int, err: int, p99: float) -> dict[str, object]:
        return {
            "requests": req,
            "errors": err,
            "p99_ms": p99,
            "timed": req,
            "error_rate": round(err / req, 4),
        }

    why = "error rate 10.34% (6/58) > max_error_rate 2.00%"
    row = {
        "phase": "canary 5%",
        "at": time.time() - 20,
        "seconds": 5.0,
        "stable": side(1127, 0, 2.0),
        "candidate": side(58, 6, 3.0),
        "verdict": "fail",
        "reasons": [why],
    }
    strategy = {
        "kind": "canary",
        "state": "rolled back",
        "steps": [5, 25, 100],
        "percent": 5,
        "intervals": [row],
        "reason": f"DeployError: canary 5% failed the analysis: {why}",
    }
    now = time.time()
    step = StepRecord(
        "deploy-prod",
        "deploy",
        StepStatus.FAILED,
        now - 40,
        now - 12,
        error=f"canary 5% failed the analysis: {why}",
        details={"environment": "prod", "outcome": "failed", "strategy": strategy},
    )
    b = seed.build("failed", steps=[step], message="Retrain with the new features")
    page.goto(f"/builds/{b.id}")
    card = page.locator('[data-strategy="deploy-prod"]')
    card.wait_for()
    assert card.locator("tr.interval").count() == 1
    text = card.inner_text()
    assert "10.34%" in text and "rolled back" in text and "1127" in text
    card.screenshot(path=str(SHOTS / "canary.png"))
