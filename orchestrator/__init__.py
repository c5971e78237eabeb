"""The orchestrator: webhooks in, builds on an RQ queue, a worker runs pipeline.yaml, deploys over SSH."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from rq import Queue

from orchestrator.config import Settings, load_settings
from orchestrator.store import Store

__all__ = ["Runtime", "create_app", "runtime"]


@dataclass
class Runtime:
    """What every request handler needs: settings, the store, the build queue."""

    settings: Settings
    store: Store
    queue: Queue

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        from orchestrator.build.queue import build_queue

        store = Store.from_settings(settings)
        return cls(settings=settings, store=store, queue=build_queue(settings))


def create_app(settings: Settings | None = None, **config: Any) -> Flask:
    """App factory: one blueprint per surface; the Runtime lives in app.extensions['mlship']."""
    settings = settings or load_settings()
    app = Flask(__name__, static_folder=None)  # the pages blueprint serves /static from web/static
    app.config.update(config)
    app.extensions["mlship"] = Runtime.from_settings(settings)
    from orchestrator.intake import webhooks
    from orchestrator.web import api
    from orchestrator.web import pages as views

    app.register_blueprint(webhooks.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(views.bp)
    return app


def runtime() -> Runtime:
    """The Runtime of the current Flask app."""
    rt: Runtime = current_app.extensions["mlship"]
    return rt
