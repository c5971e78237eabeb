"""The web test fixtures (app, a live server, seeded builds) for the CLI tests here."""

from tests.web.conftest import app, live_server, rt, seed, settings  # noqa: F401
