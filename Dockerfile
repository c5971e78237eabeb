# The house-price inference service.
#   docker build -t house-price .            (or --build-arg BASE_IMAGE=localbase/python:3.11)
#   docker run -p 5000:5000 -v ml_vol:/models:ro house-price
# Works on python:3.11-slim and on a Debian bookworm image with python3/python3-venv/python3-pip
# (where `python` may not exist and the system python is "externally managed": hence the venv).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python3 -m venv /opt/venv

# Requirements first so code changes do not reinstall the dependency layer.
COPY inference/requirements.txt /app/inference/requirements.txt
RUN /opt/venv/bin/pip install -r /app/inference/requirements.txt

RUN (getent group app || groupadd --system --gid 10001 app) \
    && (id -u app || useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent app)

WORKDIR /app
COPY inference /app/inference

# The model comes from the mounted volume, never from the image.
ENV MODEL_PATH=/models/model.skops \
    PORT=5000 \
    WEB_CONCURRENCY=2 \
    GUNICORN_THREADS=1
USER app
EXPOSE 5000

HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '5000'), timeout=2).status == 200 else 1)"]

CMD ["gunicorn", "-c", "/app/inference/gunicorn_conf.py", "inference.wsgi:app"]
