"""The status pages: content, escaping of webhook data, sign-in, CSRF-protected forms, health."""

from __future__ import annotations

import re

import pytest

from orchestrator import create_app
from orchestrator.web.pages import ago, duration, http_url
from tests.store_helpers import record_delivery

from .conftest import REPO, TOKEN, make_settings

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


def sign_in(client, token: str = TOKEN) -> None:
    resp = client.post("/login", data={"token": token, "next": "/"})
    assert resp.status_code == 303, resp.get_data(as_text=True)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert m, "no CSRF token in the form"
    return m.group(1)


def test_builds_list_shows_what_a_person_needs(client, seed):
    seed.build(
        "success", message="Retrain with 2024 data\n\nlong body", branch="main", author="alice", seconds=95
    )
    seed.build("running", message="Tune depth", branch="feature/depth", author="bob")
    html = client.get("/").get_data(as_text=True)
    assert "Retrain with 2024 data" in html and "long body" not in html  # first line only
    assert "#1" in html and "#2" in html
    assert "feature/depth" in html and "alice" in html and "pull request merged" in html
    assert "1m 35s" in html  # duration
    assert 'class="status s-running"' in html and 'class="status s-success"' in html
    assert "10 min ago" in html


def test_builds_list_filters_and_pages(redis_url):
    from .conftest import Seed

    app = create_app(make_settings(redis_url, max_rows_per_page=2))
    s = Seed(app.extensions["mlship"])
    for i in range(5):
        s.build("failed" if i % 2 else "success", message=f"change {i}")
    c = app.test_client()
    first = c.get("/").get_data(as_text=True)
    assert "change 4" in first and "change 3" in first and "change 2" not in first
    assert "1\u20132 of 5" in first and "offset=2" in first
    failed = c.get("/?status=failed").get_data(as_text=True)
    assert "change 3" in failed and "change 1" in failed and "change 4" not in failed
    rows = c.get("/?fragment=rows").get_data(as_text=True)
    assert rows.lstrip().startswith('<table class="builds cards" id="build-table">') and "<html" not in rows


def test_webhook_data_is_escaped_everywhere(client, seed):
    b = seed.build(
        "running",
        message=XSS,
        branch="x<b>y</b>",
        author='"><svg onload=alert(1)>',
        url="javascript:alert(document.cookie)",
        log=[("build", "stdout", "<script>window.__xss=3</script>")],
    )
    for path in ("/", f"/builds/{b.id}", f"/builds/{b.id}?fragment=summary"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>window.__xss" not in html
        assert "<img src=x" not in html and "<svg" not in html and "<b>y</b>" not in html
        assert "javascript:alert" not in html
    page = client.get(f"/builds/{b.id}").get_data(as_text=True)
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page
    assert "&lt;script&gt;window.__xss=3&lt;/script&gt;" in page  # the log too


def test_build_page_shows_steps_artifacts_deploys_and_log(client, seed):
    from orchestrator.models import StepRecord, StepStatus

    steps = [
        StepRecord("build", "docker_build", StepStatus.SUCCESS, 100.0, 141.0),
        StepRecord(
            "deploy-qa",
            "deploy",
            StepStatus.SUCCESS,
            141.0,
            160.0,
            details={
                "environment": "qa",
                "hosts": [{"host": "qa-1:22", "status": "healthy", "container": "house-price-qa"}],
            },
        ),
    ]
    b = seed.build(
        "success",
        steps=steps,
        image="127.0.0.1:5000/house-price:7",
        digest="sha256:" + "ab" * 32,
        log=[("build", "stdout", "Successfully built 1234")],
    )
    html = client.get(f"/builds/{b.id}").get_data(as_text=True)
    assert "deploy-qa" in html and "41s" in html
    assert "127.0.0.1:5000/house-price:7" in html and "sha256:abab" in html
    assert "qa-1:22" in html and "house-price-qa" in html and "s-healthy" in html
    assert f'href="https://github.com/{REPO}/commit/{b.sha}"' in html
    assert "Successfully built 1234" in html
    assert "data-stream" not in html  # finished: no live stream


def test_buttons_only_when_they_apply_and_only_when_signed_in(client, seed):
    running = seed.build("running")
    done = seed.build("failed")
    anon = client.get(f"/builds/{running.id}").get_data(as_text=True)
    assert "Sign in to act" in anon and "cancel-btn" not in anon
    sign_in(client)
    run_page = client.get(f"/builds/{running.id}").get_data(as_text=True)
    assert "cancel-btn" in run_page and "rerun-btn" not in run_page
    assert "data-stream=" in run_page
    done_page = client.get(f"/builds/{done.id}").get_data(as_text=True)
    assert "rerun-btn" in done_page and "cancel-btn" not in done_page
    assert "promote-btn" not in done_page  # failed builds are not promoted


def test_promote_button_lists_the_pipelines_environments(client, seed):
    pipeline = "version: 1\nname: x\nimage: r/x\nsteps: []\nenvironments:\n  qa: {}\n  prod: {}\n"
    b = seed.build("success", pipeline_yaml=pipeline)
    sign_in(client)
    html = client.get(f"/builds/{b.id}").get_data(as_text=True)
    assert "promote-btn" in html and "<option>prod</option>" in html and "<option>qa</option>" in html


def test_form_actions_need_sign_in_and_csrf(client, seed, rt):
    b = seed.build("failed")
    assert client.post(f"/builds/{b.id}/rerun").status_code == 401
    sign_in(client)
    page = client.get(f"/builds/{b.id}").get_data(as_text=True)
    token = csrf_of(page)
    assert client.post(f"/builds/{b.id}/rerun").status_code == 403
    assert client.post(f"/builds/{b.id}/rerun", data={"csrf_token": "0" * 64}).status_code == 403
    assert rt.store.list_builds()[1] == 1
    resp = client.post(f"/builds/{b.id}/rerun", data={"csrf_token": token})
    assert resp.status_code == 303
    new_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    new = rt.store.get_build(new_id)
    assert new.rerun_of == b.id and new.triggered_by.endswith("by API_TOKEN")
    assert f"Build #{new.number} queued" in client.get(resp.headers["Location"]).get_data(as_text=True)


def test_csrf_token_of_another_session_is_refused(app, seed):
    b = seed.build("failed")
    alice, mallory = app.test_client(), app.test_client()
    sign_in(alice)
    sign_in(mallory)
    mallory_token = csrf_of(mallory.get(f"/builds/{b.id}").get_data(as_text=True))
    assert alice.post(f"/builds/{b.id}/rerun", data={"csrf_token": mallory_token}).status_code == 403


def test_cancel_form(client, seed, rt):
    b = seed.build("queued")
    sign_in(client)
    token = csrf_of(client.get(f"/builds/{b.id}").get_data(as_text=True))
    resp = client.post(f"/builds/{b.id}/cancel", data={"csrf_token": token})
    assert resp.status_code == 303 and rt.store.get_build(b.id).status == "cancelled"


def test_sign_in_refuses_a_wrong_token_and_never_stores_the_token(client):
    resp = client.post("/login", data={"token": "wrong", "next": "/"})
    assert resp.status_code == 403 and "not valid" in resp.get_data(as_text=True)
    ok = client.post("/login", data={"token": TOKEN, "next": "https://evil.example/"})
    assert ok.headers["Location"] == "/"  # no open redirect
    cookie = ok.headers["Set-Cookie"]
    assert TOKEN not in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_session_ends_when_the_token_is_rotated(redis_url, seed):
    app1 = create_app(make_settings(redis_url))
    c = app1.test_client()
    sign_in(c)
    cookie = c.get_cookie("mlship_session").value
    rotated = create_app(make_settings(redis_url, secrets={"API_TOKEN": "new-token", "OPS_TOKEN": "x"}))
    c2 = rotated.test_client()
    c2.set_cookie("mlship_session", cookie)
    assert "Sign in" in c2.get("/").get_data(as_text=True)


def test_read_auth_redirects_pages_to_sign_in(redis_url):
    c = create_app(make_settings(redis_url, read_auth=True)).test_client()
    resp = c.get("/deliveries")
    assert resp.status_code == 302 and "/login?next=" in resp.headers["Location"]
    assert c.get("/healthz").status_code == 200
    sign_in(c)
    assert c.get("/deliveries").status_code == 200
    assert c.get("/api/v1/builds").status_code == 200  # the page's session also reads the API


def test_deliveries_and_environments_pages(client, rt):
    from orchestrator.models import Delivery, Deployment

    record_delivery(
        rt.store,
        Delivery(
            id="abc-123",
            event="pull_request",
            repo=REPO,
            verdict="rejected",
            reason="signature does not match",
            status_code=401,
        ),
    )
    rt.store.set_deployment(
        Deployment(
            repo=REPO,
            environment="prod",
            build_id=3,
            build_number=3,
            image="reg/house-price:3",
            sha="c" * 40,
            hosts=["prod-1:22"],
        )
    )
    d = client.get("/deliveries").get_data(as_text=True)
    assert "abc-123" in d and "signature does not match" in d and "v-rejected" in d
    e = client.get("/environments").get_data(as_text=True)
    assert "prod" in e and "reg/house-price:3" in e and "prod-1:22" in e
    assert "mixed fleet" not in e


def test_environments_page_and_api_show_a_mixed_fleet(client, rt):
    """A rollout that stopped after its first batch: host a runs #4, host b still #3."""
    from orchestrator.models import Deployment

    def run(n: int) -> dict[str, object]:
        return {"build_id": n, "build_number": n, "image": f"reg/hp:{n}", "container": f"hp-b{n}"}

    rt.store.set_deployment(
        Deployment(
            repo=REPO,
            environment="qa",
            build_id=3,
            build_number=3,
            image="reg/hp:3",
            sha="c" * 40,
            hosts=["u@a:22", "u@b:22"],
            runs={"u@a:22": run(4), "u@b:22": run(3)},
            mixed=True,
        ),
        complete=False,
    )
    e = client.get("/environments").get_data(as_text=True)
    assert "mixed fleet" in e and "hp-b4" in e and "reg/hp:4" in e and "hp-b3" in e
    (env,) = client.get("/api/v1/environments").get_json()["environments"]
    cur = env["current"]
    assert cur["mixed"] is True and cur["build_number"] == 3
    assert {h: r["build_number"] for h, r in cur["runs"].items()} == {"u@a:22": 4, "u@b:22": 3}
    assert env["history"] == []  # an incomplete deployment never enters the history


def test_unknown_build_page_is_a_404_page(client):
    resp = client.get("/builds/424242")
    assert resp.status_code == 404 and "build 424242 does not exist" in resp.get_data(as_text=True)


@pytest.mark.parametrize(
    "seconds, text", [(None, "\u2013"), (1.234, "1.2s"), (42, "42s"), (185, "3m 05s"), (3725, "1h 02m")]
)
def test_duration(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize(
    "delta, text", [(5, "just now"), (300, "5 min ago"), (7200, "2 h ago"), (3 * 86400, "3 days ago")]
)
def test_ago(delta, text):
    assert ago(1000000.0 - delta, now=1000000.0) == text


@pytest.mark.parametrize(
    "url, ok",
    [
        ("https://github.com/a/b", True),
        ("http://x", True),
        ("javascript:alert(1)", False),
        ("JaVaScRiPt:x", False),
        ("data:text/html,x", False),
        ("//evil", False),
    ],
)
def test_only_http_links(url, ok):
    assert (http_url(url) == url) is ok
    assert http_url("") == ""


def test_rollback_buttons_where_a_previous_deployment_exists(client, seed, rt):
    from orchestrator.models import Deployment

    old, new = seed.build("success"), seed.build("success")
    sign_in(client)
    rt.store.set_deployment(
        Deployment(
            repo=REPO, environment="qa", build_id=old.id, build_number=old.number, image="r/x:1", sha=old.sha
        )
    )
    assert "Roll back" not in client.get("/environments").get_data(as_text=True)  # nothing earlier
    rt.store.set_deployment(
        Deployment(
            repo=REPO, environment="qa", build_id=new.id, build_number=new.number, image="r/x:2", sha=new.sha
        )
    )
    envs = client.get("/environments").get_data(as_text=True)
    assert "Roll back" in envs and 'action="/environments/qa/rollback"' in envs
    assert "Roll back qa" in client.get(f"/builds/{new.id}").get_data(as_text=True)
    assert "Roll back qa" not in client.get(f"/builds/{old.id}").get_data(as_text=True)
