"""CPU per webhook delivery in-process: prebuilt WSGI environs through the real app, real Redis.

    .venv/bin/python bench/webhook_profile.py [N]                    # CPU µs per delivery (process_time)
    .venv/bin/py-spy record -r 500 -f raw -o /tmp/intake.txt -- .venv/bin/python bench/webhook_profile.py 4000
    PYTHONPATH=<worktree of another commit> .venv/bin/python bench/webhook_profile.py   # the same for it

No HTTP server: what this measures is the app's own work per merged-PR delivery (Flask, signature,
parsing, the build transaction, the log line), which ``webhook_bench.py`` measures end to end.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # appended: a PYTHONPATH checkout comes first

from werkzeug.test import EnvironBuilder  # noqa: E402

from orchestrator import create_app  # noqa: E402
from orchestrator.devstack.services import RedisServer  # noqa: E402
from orchestrator.intake.github import sign  # noqa: E402
from tests.webhooks.helpers import SECRET, merged_pr, settings  # noqa: E402

WARM = 200


def environ() -> dict[str, Any]:
    body = json.dumps(merged_pr(uuid.uuid4().hex + uuid.uuid4().hex[:8])).encode()
    h = {
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(SECRET.encode(), body),
    }
    return EnvironBuilder(path="/webhooks/github", method="POST", data=body, headers=h).get_environ()


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    work = Path(tempfile.mkdtemp(prefix="mlship-whprof-"))
    redis = RedisServer(work / "redis").start()
    try:
        app = create_app(settings(redis.url))
        envs = [environ() for _ in range(n + WARM)]

        def call(env: dict[str, Any]) -> None:
            status: list[str] = []
            app.wsgi_app(env, lambda s, h, exc=None: status.append(s))
            if not status[0].startswith("202"):
                raise SystemExit(f"unexpected answer {status[0]}")

        for env in envs[:WARM]:
            call(env)
        t0 = time.process_time()
        for env in envs[WARM:]:
            call(env)
        print(f"CPU per delivery: {(time.process_time() - t0) / n * 1e6:.0f} µs ({n} deliveries)")
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
