"""Redis is root-equivalent (issue 18, finding 3): whoever writes to it can queue jobs for a worker
that is root with the Docker socket. So it has a password, build containers cannot reach it, and
the worker runs nothing but the build entry point, whatever a job in the queue names."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from orchestrator import servicelog
from orchestrator.build.queue import RUN_BUILD
from orchestrator.config import Settings
from orchestrator.devstack.services import GitOrigin, RedisServer
from orchestrator.errors import InfrastructureError
from orchestrator.models import BuildStatus
from orchestrator.store import Store
from tests.pipeline.conftest import BUILD_STEP, Builds, small_pipeline

PASSWORD = "redis-pw-" + uuid.uuid4().hex


def touch(path: str, *_: Any) -> None:
    """What a hostile job would run: proof of execution."""
    Path(path).touch()


def touch_from_meta(job: Any, *_: Any) -> None:
    """A hostile success callback on an otherwise legitimate build job."""
    Path(job.meta["marker"]).touch()


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    except InfrastructureError as exc:
        from tests.conftest import unavailable

        unavailable(str(exc))
    yield server
    server.stop()


def test_redis_with_a_password_refuses_anonymous_clients(locked_redis: RedisServer) -> None:
    anonymous = redis.Redis(port=locked_redis.port, socket_timeout=2)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    store = Store.from_url(locked_redis.url)
    assert store.latest_build_id() == 0  # the orchestrator's own clients authenticate through the URL


def test_the_redis_password_is_masked_in_the_service_log(locked_redis: RedisServer) -> None:
    settings = Settings(redis_url=locked_redis.url)
    assert PASSWORD in settings.secret_values()
    out = io.StringIO()
    servicelog.configure(settings.secret_values(), stream=out)
    try:
        servicelog.event(servicelog.get("test"), "connect", url=locked_redis.url)
    finally:
        servicelog.configure()
    line = json.loads(out.getvalue().splitlines()[-1])
    assert PASSWORD not in out.getvalue() and "***" in line["url"]


def _worker(redis_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(
        {
            "ORCHESTRATOR_REDIS_URL": redis_url,
            "ORCHESTRATOR_WORKSPACE": str(tmp_path / "ws"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "worker", "--burst"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_worker_refuses_a_job_naming_any_other_callable(locked_redis: RedisServer, tmp_path: Path) -> None:
    """A job written into the build queue by someone with Redis access names another function (and
    a legitimate build job carries a callback): the real worker process fails the first with the
    reason and never calls either; the build entry point still runs."""
    marker, callback_marker = tmp_path / "ran", tmp_path / "callback-ran"
    conn = redis.Redis.from_url(locked_redis.url)
    queue = Queue("builds", connection=conn, serializer=JSONSerializer)
    hostile = queue.enqueue_call(f"{__name__}.touch", args=(str(marker),))
    builtin = queue.enqueue_call("subprocess.check_call", args=(["touch", str(marker)],))
    legit = queue.enqueue_call(
        RUN_BUILD,
        args=("0" * 32,),  # an unknown ticket: the entry point answers "duplicate"
        meta={"marker": str(callback_marker)},
        on_success=Callback(f"{__name__}.touch_from_meta"),
    )
    done = _worker(locked_redis.url, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not marker.exists() and not callback_marker.exists()
    for job in (hostile, builtin):
        job = Job.fetch(job.id, connection=conn, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.FAILED
        assert f"refused: this worker runs only {RUN_BUILD}" in (job.latest_result().exc_string or "")
    legit = Job.fetch(legit.id, connection=conn, serializer=JSONSerializer)
    assert legit.get_status() == JobStatus.FINISHED and legit.return_value() == "duplicate"
    conn.close()


@pytest.mark.docker
def test_build_containers_cannot_reach_the_servers_redis(
    make_settings: Callable[..., Settings], store: Store, git_origin: GitOrigin, redis_url: str
) -> None:
    """From a real build container on the default network, neither the container's loopback nor
    the host's gateway address answers on Redis's port (it listens on the host's loopback only)."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    probe = textwrap.dedent(f"""\
        import socket
        hexgw = open("/proc/net/route").read().splitlines()[1].split()[2]
        gateway = ".".join(str(int(hexgw[i : i + 2], 16)) for i in (6, 4, 2, 0))
        for host in ("127.0.0.1", gateway):
            s = socket.socket()
            s.settimeout(3)
            print("probe", host, "open" if s.connect_ex((host, {port})) == 0 else "closed")
        """)
    pipeline = small_pipeline(
        BUILD_STEP + "- name: probe\n  docker_run: {command: [python3, /work/probe.py]}\n"
    )
    b = Builds(make_settings(), store, git_origin)
    try:
        build = b.commit_and_run(pipeline, {"small/probe.py": probe})
    finally:
        b.queue.connection.close()
    log = store.log_text(build.id)
    assert build.status is BuildStatus.SUCCESS, log
    probes = [line for line in log.splitlines() if "probe " in line and "closed" in line]
    assert len(probes) == 2 and "open" not in " ".join(probes), log


logging.getLogger("rq").setLevel(logging.WARNING)
