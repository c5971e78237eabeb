"""Timing defaults in one place (seconds unless the name says _MS).

Modules read their value from here (``LOCK_TTL = defaults.LOCK_TTL``) so the numbers that decide how
long anything waits are reviewed together. Settings an operator tunes (``lease_seconds``,
``build_timeout``) are fields of ``orchestrator.config.Settings`` instead.
"""

from __future__ import annotations

# Intake and store
INTAKE_TIMEOUT = 1.5  # a Redis call on the webhook path: GitHub must get its 503 within 2 s
TICKET_TTL = 8 * 24 * 3600  # a build ticket outlives GitHub's redelivery window (7 days)

# Builds
GIT_TIMEOUT = 600.0  # one git fetch/checkout of the commit to build
LS_REMOTE_TIMEOUT = 30.0  # resolving a branch head for a manual trigger
JANITOR_INTERVAL = 2.0  # how often a worker looks for builds whose lease expired
RETENTION_INTERVAL = 60.0  # how often a worker prunes builds and logs past retention
PRUNED_TOMBSTONE_TTL = 90 * 24 * 3600  # a pruned build's tombstone (why it went) is kept this long
CLAIM_CONFIRM_TIMEOUT = 30.0  # with redis_wait_replicas: how long a claim may wait for its replicas
CLAIM_CONFIRM_POLL = 0.2  # between two tries to confirm a claim (a failover under way)
CANCEL_POLL = 0.5  # how often a running step checks for a cancel request
DOCKER_STOP_GRACE = 2  # SIGTERM → SIGKILL for a step's container on cancel/timeout
SHELL_KILL_GRACE = 2.0  # SIGTERM → SIGKILL for a shell step's process group

# Deploys
DEPLOY_CONNECT_TIMEOUT = 10.0  # SSH connect to a deploy host
DEPLOY_COMMAND_TIMEOUT = 300.0  # one remote command (a pull of a large image is the slow one)
DEPLOY_STOP_GRACE = 10  # SIGTERM → SIGKILL for an old container after the drain
MODEL_PRUNE_GRACE = 3600.0  # a model directory younger than this is never pruned (a concurrent upload)
MODEL_REGISTRY_TIMEOUT = 60.0  # one request to the registry for a model (connect; a read between chunks)
LOCK_TTL = 30.0  # a deploy lock outlives its last renewal by this much
LOCK_POLL = 0.5  # how often a waiting deploy retries the environment lock

# Web, API and notifications
STREAM_SECONDS = 25.0  # a live-log stream closes after this; EventSource resumes with Last-Event-ID
STREAM_BLOCK_MS = 1000  # one XREAD block: well below the store client's 5 s socket timeout
STREAM_RETRY_MS = 500  # the EventSource retry hint
METRICS_FLUSH_INTERVAL = 1.0  # request counters are flushed to Redis this often
METRICS_PAUSE_AFTER_FAILURE = 5.0  # after a failed flush (Redis down), wait this long
COMMIT_STATUS_TIMEOUT = 5.0  # one GitHub commit-status request
API_CLIENT_TIMEOUT = 10.0  # one CLI request to the API

# Dev stack
BASE_IMAGE_PULL_TIMEOUT = 20.0  # a pull with no route to a registry hangs in name resolution
SERVICE_START_TIMEOUT = 15.0  # Redis, registry, sshd answering on their port
DOCKERD_START_TIMEOUT = 60.0  # a dockerd of the stack's own answering on its socket
PROCESS_STOP_TIMEOUT = 15.0  # SIGTERM → SIGKILL for the stack's web and worker processes
