# The orchestrator image (web and worker). Build from the repository root:
#   docker build -f deploy/orchestrator.Dockerfile -t mlship/orchestrator .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# git fetches the commit to build; the worker talks to Docker through the SDK (no docker CLI needed).
RUN apt-get update && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
COPY pyproject.toml README.md /src/
# orchestrator/devstack/example/ links to these (the example app `mlship standalone` serves).
COPY Dockerfile pipeline.yaml .dockerignore /src/
COPY orchestrator /src/orchestrator
COPY inference /src/inference
RUN pip install --no-cache-dir /src && rm -rf /src
RUN useradd --create-home --uid 10001 mlship && mkdir -p /var/lib/mlship && chown mlship /var/lib/mlship
USER mlship
WORKDIR /home/mlship
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["mlship", "web", "--bind", "0.0.0.0:8000"]
