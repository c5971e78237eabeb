"""The REST API against the real session Redis (and a real git origin for branch resolution)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from orchestrator import create_app
from orchestrator.devstack.services import GitOrigin
from tests.store_helpers import record_delivery

from .conftest import OTHER_TOKEN, REPO, TOKEN, auth, make_settings


def test_list_builds_newest_first_with_filters_and_pages(client, seed):
    a = seed.build("success", branch="main")
    b = seed.build("failed", branch="feature/x")
    c = seed.build("running", branch="main")
    body = client.get("/api/v1/builds").get_json()
    assert [x["id"] for x in body["builds"]] == [c.id, b.id, a.id]
    assert body["total"] == 3
    assert body["builds"][0]["links"]["web"] == f"/builds/{c.id}"
    only_main = client.get("/api/v1/builds?branch=main").get_json()
    assert [x["id"] for x in only_main["builds"]] == [c.id, a.id]
    failed = client.get("/api/v1/builds?status=failed").get_json()
    assert [x["id"] for x in failed["builds"]] == [b.id]
    page2 = client.get("/api/v1/builds?limit=2&offset=2").get_json()
    assert [x["id"] for x in page2["builds"]] == [a.id] and page2["total"] == 3


@pytest.mark.parametrize(
    "query, parameter",
    [
        ("status=exploded", "status"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("offset=-1", "offset"),
    ],
)
def test_bad_query_parameters_are_400_with_a_message(client, query, parameter):
    resp = client.get(f"/api/v1/builds?{query}")
    assert resp.status_code == 400
    err = resp.get_json()["error"]
    assert err["code"] == "bad_payload" and parameter in err["message"]


def test_get_build_and_unknown_build(client, seed):
    b = seed.build("failed")
    got = client.get(f"/api/v1/builds/{b.id}").get_json()
    assert got["status"] == "failed" and got["steps"][1]["error"] == "tests failed: exit code 1"
    missing = client.get("/api/v1/builds/999999")
    assert missing.status_code == 404
    assert missing.get_json() == {"error": {"code": "not_found", "message": "build 999999 does not exist"}}


def test_unknown_api_path_and_wrong_method_answer_json(client):
    resp = client.get("/api/v1/nothing-here")
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    resp = client.delete("/api/v1/builds")
    assert resp.status_code == 405 and "GET" in resp.headers["Allow"]
    assert resp.get_json()["error"]["code"] == "method_not_allowed"


def test_log_as_text(client, seed):
    log = [("build", "stdout", "Step 1/4 : FROM base"), ("test", "stderr", "3 passed")]
    b = seed.build("success", log=log)
    resp = client.get(f"/api/v1/builds/{b.id}/log")
    assert resp.mimetype == "text/plain"
    assert resp.get_data(as_text=True) == "[build] Step 1/4 : FROM base\n[test] 3 passed\n"


def events(raw: str) -> list[dict]:
    out = []
    for frame in raw.split("\n\n"):
        ev = {}
        for line in frame.splitlines():
            key, _, value = line.partition(": ")
            if key in ("id", "event", "data"):
                ev[key] = value
        if "event" in ev:
            ev["data"] = json.loads(ev["data"])
            out.append(ev)
    return out


def test_stream_of_a_finished_build_sends_every_line_then_end(client, seed):
    b = seed.build("failed", log=[("build", "stdout", f"line {i}") for i in range(3)], error="tests failed")
    resp = client.get(f"/api/v1/builds/{b.id}/log/stream")
    assert resp.mimetype == "text/event-stream"
    evs = events(resp.get_data(as_text=True))
    assert [e["data"]["text"] for e in evs if e["event"] == "log"] == ["line 0", "line 1", "line 2"]
    assert evs[-1]["event"] == "end" and evs[-1]["data"] == {"status": "failed", "error": "tests failed"}


def test_stream_resumes_after_last_event_id(client, seed):
    b = seed.build("success", log=[("build", "stdout", f"line {i}") for i in range(4)])
    first = events(client.get(f"/api/v1/builds/{b.id}/log/stream").get_data(as_text=True))
    second_id = first[1]["id"]
    resumed = events(
        client.get(f"/api/v1/builds/{b.id}/log/stream", headers={"Last-Event-ID": second_id}).get_data(
            as_text=True
        )
    )
    assert [e["data"]["text"] for e in resumed if e["event"] == "log"] == ["line 2", "line 3"]
    bad = client.get(f"/api/v1/builds/{b.id}/log/stream", headers={"Last-Event-ID": "x; DROP"})
    assert bad.status_code == 400


def test_stream_follows_a_running_build_live(client, seed, rt):
    b = seed.build("running", log=[("build", "stdout", "started")])

    def worker() -> None:  # what the runner does: lines arrive, then the final status
        for i in range(3):
            time.sleep(0.3)
            rt.store.append_log(b.id, [("test", "stdout", f"live {i}")])
        time.sleep(0.3)
        rt.store.update_build(b.id, status="success", finished_at=time.time())

    t = threading.Thread(target=worker)
    t.start()
    started = time.monotonic()
    resp = client.get(f"/api/v1/builds/{b.id}/log/stream", buffered=False)
    seen = []
    for chunk in resp.response:
        seen.extend(events(chunk.decode() if isinstance(chunk, bytes) else chunk))
        if seen and seen[-1]["event"] == "end":
            break
    t.join()
    texts = [e["data"]["text"] for e in seen if e["event"] == "log"]
    assert texts == ["started", "live 0", "live 1", "live 2"]
    assert seen[-1]["data"]["status"] == "success"
    assert time.monotonic() - started < 5  # blocks ≤ 1 s at a time, so the end is seen promptly


# -- auth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, status, code",
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-token"}, 403, "forbidden"),
        ({"Authorization": f"Basic {TOKEN}"}, 401, "unauthorized"),
        ({"Authorization": f"Bearer {TOKEN}"}, 201, None),
        ({"Authorization": f"Bearer {OTHER_TOKEN}"}, 201, None),
    ],
)
def test_writes_need_a_valid_bearer_token(client, seed, rt, headers, status, code):
    b = seed.build("failed")
    resp = client.post(f"/api/v1/builds/{b.id}/rerun", headers=headers)
    assert resp.status_code == status, resp.get_json()
    if code:
        assert resp.get_json()["error"]["code"] == code
        assert rt.store.list_builds()[1] == 1  # nothing was created
        assert TOKEN not in resp.get_data(as_text=True)
    else:
        new = resp.get_json()
        assert new["rerun_of"] == b.id and new["status"] == "queued" and new["number"] == b.number + 1
        assert resp.headers["Location"] == f"/api/v1/builds/{new['id']}"
        assert new["triggered_by"].endswith(
            "by API_TOKEN" if headers["Authorization"].endswith(TOKEN) else "by OPS_TOKEN"
        )
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_reads_are_open_unless_read_auth(redis_url):
    open_app = create_app(make_settings(redis_url)).test_client()
    assert open_app.get("/api/v1/builds").status_code == 200
    closed = create_app(make_settings(redis_url, read_auth=True)).test_client()
    assert closed.get("/api/v1/builds").status_code == 401
    assert closed.get("/api/v1/builds", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert closed.get("/api/v1/builds", headers=auth()).status_code == 200
    assert closed.get("/api/v1/openapi.json").status_code == 200


def test_no_configured_tokens_means_no_writes(redis_url):
    app = create_app(make_settings(redis_url, secrets={"API_TOKEN": "", "OPS_TOKEN": ""}))
    resp = app.test_client().post("/api/v1/builds/1/rerun", headers=auth())
    assert resp.status_code == 403 and "API_TOKEN" in resp.get_json()["error"]["message"]


# -- actions --------------------------------------------------------------------------------------


def test_rerun_of_a_running_build_is_a_conflict(client, seed):
    b = seed.build("running")
    resp = client.post(f"/api/v1/builds/{b.id}/rerun", headers=auth())
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "conflict"


def test_cancel_a_queued_build_takes_its_job_off_the_queue(client, seed, rt):
    b = seed.build("queued")
    assert rt.queue.count == 1
    resp = client.post(f"/api/v1/builds/{b.id}/cancel", headers=auth())
    assert resp.status_code == 202
    assert resp.get_json()["status"] == "cancelled"
    assert rt.queue.count == 0
    again = client.post(f"/api/v1/builds/{b.id}/cancel", headers=auth())
    assert again.status_code == 409 and "already finished" in again.get_json()["error"]["message"]


def test_cancel_a_running_build_raises_its_flag(client, seed, rt):
    b = seed.build("running")
    resp = client.post(f"/api/v1/builds/{b.id}/cancel", headers=auth())
    assert resp.status_code == 202 and resp.get_json()["status"] == "running"
    assert rt.store.cancel_requested(b.id)


@pytest.fixture
def origin_app(redis_url, git_origin: GitOrigin):
    return create_app(make_settings(redis_url, clone_url=git_origin.url))


def test_trigger_a_branch_resolves_its_head_at_the_origin(origin_app, git_origin):
    sha = git_origin.commit("feature/speedup", {"NOTES.md": "faster\n"}, "Speed up")
    c = origin_app.test_client()
    resp = c.post("/api/v1/builds", json={"repo": REPO, "ref": "feature/speedup"}, headers=auth())
    assert resp.status_code == 201, resp.get_json()
    b = resp.get_json()
    assert (b["sha"], b["branch"], b["ref"], b["trigger"]) == (
        sha,
        "feature/speedup",
        "refs/heads/feature/speedup",
        "manual",
    )
    assert b["triggered_by"] == "API_TOKEN"
    assert origin_app.extensions["mlship"].queue.count == 1


def test_trigger_an_exact_sha(origin_app, git_origin):
    sha = git_origin.head("main")
    resp = origin_app.test_client().post("/api/v1/builds", json={"repo": REPO, "sha": sha}, headers=auth())
    assert resp.status_code == 201 and resp.get_json()["sha"] == sha


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"repo": REPO, "ref": "no-such-branch"}, 404, "does not exist"),
        ({"repo": REPO, "ref": "--upload-pack=touch /tmp/pwned"}, 400, "not a valid branch"),
        ({"repo": REPO, "ref": "a..b"}, 400, "not a valid branch"),
        ({"repo": REPO, "sha": "HEAD"}, 400, "40-character"),
        ({"repo": REPO}, 400, "give a ref"),
        ({"repo": "evil/repo", "ref": "main"}, 404, "not allow-listed"),
        ({"ref": "main"}, 400, "repo is required"),
    ],
)
def test_trigger_rejects_bad_requests(origin_app, body, status, fragment):
    resp = origin_app.test_client().post("/api/v1/builds", json=body, headers=auth())
    assert resp.status_code == status, resp.get_json()
    assert fragment in resp.get_json()["error"]["message"]


def test_trigger_body_must_be_a_json_object(client):
    resp = client.post("/api/v1/builds", data="[1, 2]", content_type="application/json", headers=auth())
    assert resp.status_code == 400 and "JSON object" in resp.get_json()["error"]["message"]


PIPELINE = """\
version: 1
name: house-price
image: registry.local/house-price
steps:
  - name: build
    docker_build: {}
  - name: deploy-qa
    deploy: {environment: qa}
environments:
  qa:
    hosts: [{host: 127.0.0.1, port: 2222}]
    container: {name: house-price-qa}
  prod:
    hosts: [{host: 127.0.0.1, port: 2223}]
    container: {name: house-price-prod}
"""


def test_promote_validates_then_queues_a_promote_build(client, seed):
    b = seed.build(
        "success", pipeline_yaml=PIPELINE, image="registry.local/house-price:1", digest="sha256:" + "1" * 64
    )
    bad = client.post(f"/api/v1/builds/{b.id}/promote", json={"environment": "../prod"}, headers=auth())
    assert bad.status_code == 400
    missing = client.post("/api/v1/builds/999999/promote", json={"environment": "prod"}, headers=auth())
    assert missing.status_code == 404
    promote = f"/api/v1/builds/{b.id}/promote"
    unknown_env = client.post(promote, json={"environment": "staging"}, headers=auth())
    assert unknown_env.status_code == 404 and "staging" in unknown_env.get_json()["error"]["message"]
    resp = client.post(f"/api/v1/builds/{b.id}/promote", json={"environment": "prod"}, headers=auth())
    assert resp.status_code == 201, resp.get_json()
    new = resp.get_json()
    assert (new["trigger"], new["deploys"]["environment"], new["image"]) == (
        "promote",
        "prod",
        "registry.local/house-price:1",
    )
    failed = seed.build("failed", pipeline_yaml=PIPELINE)
    conflict = client.post(
        f"/api/v1/builds/{failed.id}/promote", json={"environment": "prod"}, headers=auth()
    )
    assert conflict.status_code == 409


def test_rollback_queues_a_build_of_the_previous_deployment(client, seed, rt):
    from orchestrator.models import Deployment

    old = seed.build("success", pipeline_yaml=PIPELINE, image="registry.local/house-price:1")
    new = seed.build("success", pipeline_yaml=PIPELINE, image="registry.local/house-price:2")
    nothing = client.post("/api/v1/environments/qa/rollback", json={"repo": REPO}, headers=auth())
    assert nothing.status_code == 404
    for b in (old, new):
        rt.store.set_deployment(
            Deployment(
                repo=REPO, environment="qa", build_id=b.id, build_number=b.number, image=b.image, sha=b.sha
            )
        )
    assert (
        client.post("/api/v1/environments/qa/rollback", json={"repo": "evil/x"}, headers=auth()).status_code
        == 404
    )
    assert client.post("/api/v1/environments/qa/rollback", json={"repo": REPO}).status_code == 401
    resp = client.post("/api/v1/environments/qa/rollback", json={"repo": REPO}, headers=auth())
    assert resp.status_code == 201, resp.get_json()
    rb = resp.get_json()
    assert (rb["trigger"], rb["image"], rb["deploys"]["source_build"]) == ("rollback", old.image, old.id)


def test_deliveries_and_environments(client, rt):
    from orchestrator.models import Delivery, Deployment

    record_delivery(
        rt.store,
        Delivery(
            id="d-1",
            event="push",
            repo=REPO,
            verdict="ignored",
            reason="branch dev is not tracked",
            status_code=200,
        ),
    )
    rt.store.set_deployment(
        Deployment(
            repo=REPO,
            environment="qa",
            build_id=1,
            build_number=1,
            image="reg/house-price:1",
            sha="a" * 40,
            hosts=["qa:22"],
        )
    )
    rt.store.set_deployment(
        Deployment(
            repo=REPO,
            environment="qa",
            build_id=2,
            build_number=2,
            image="reg/house-price:2",
            sha="b" * 40,
            hosts=["qa:22"],
        )
    )
    d = client.get("/api/v1/deliveries").get_json()
    assert d["total"] == 1 and d["deliveries"][0]["reason"] == "branch dev is not tracked"
    envs = client.get("/api/v1/environments").get_json()["environments"]
    assert envs[0]["environment"] == "qa" and envs[0]["current"]["build_number"] == 2
    assert [h["build_number"] for h in envs[0]["history"]] == [2, 1]


def test_redis_down_is_503_json(redis_url, own_redis):
    app = create_app(make_settings(own_redis.url))
    c = app.test_client()
    own_redis.stop()
    resp = c.get("/api/v1/builds")
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "store_unavailable"
    assert c.get("/healthz").status_code == 503
    own_redis.start()
    assert c.get("/healthz").status_code == 200
