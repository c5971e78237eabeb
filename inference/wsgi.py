"""The WSGI entry point for gunicorn: ``gunicorn -c inference/gunicorn_conf.py inference.wsgi:app``."""

from inference.app import create_app

app = create_app()
