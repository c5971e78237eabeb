"""One error hierarchy for the orchestrator. Every error carries the context a user needs to act."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every error this package raises on purpose.

    Each class carries its outcome, so no caller keeps a table of its own: ``code`` is a stable
    machine-readable name (API error bodies), ``http_status`` what the API and the webhook answer,
    ``step_status`` what a step that raised it ends as, ``commit_state`` the forge commit state a
    build ended by it reports. ``context`` holds the facts that explain the error (file, key, host...).
    """

    code = "error"
    http_status = 500
    step_status = "error"
    commit_state = "error"

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message


class ConfigError(OrchestratorError):
    """The server configuration is invalid; the message names the key and the fix."""

    code = "config_error"


class SignatureError(OrchestratorError):
    """A webhook delivery's signature is missing or wrong (never includes the expected MAC)."""

    code = "bad_signature"
    http_status = 401


class PayloadError(OrchestratorError):
    """A webhook or API payload is malformed or lacks required fields."""

    code = "bad_payload"
    http_status = 400


class StoreUnavailable(OrchestratorError):
    """Redis cannot be reached; callers answer 503 so the sender retries."""

    code = "store_unavailable"
    http_status = 503


class NotReplicated(StoreUnavailable):
    """A write reached the Redis primary but fewer replicas than ``redis_wait_replicas`` confirmed it:
    a failover could lose it, so it is not acknowledged (503); a retry is safe (dedup, records)."""

    code = "not_replicated"


class NotFound(OrchestratorError):
    """A build, delivery or environment that does not exist."""

    code = "not_found"
    http_status = 404


class Conflict(OrchestratorError):
    """An action that does not apply to the current state (cancel a finished build...)."""

    code = "conflict"
    http_status = 409


class PipelineError(OrchestratorError):
    """pipeline.yaml is invalid; context has file, line and key."""

    code = "pipeline_error"
    http_status = 409
    step_status = "failed"
    commit_state = "failure"


class StepFailed(OrchestratorError):
    """A step ran and failed on its own terms (non-zero exit, failed health check, failed gate)."""

    code = "step_failed"
    step_status = "failed"
    commit_state = "failure"


class InfrastructureError(OrchestratorError):
    """Something the build depends on broke (daemon down, clone failed, host unreachable)."""

    code = "infrastructure_error"
    http_status = 502


class DeployError(StepFailed):
    """A deploy failed (health check, swap); the previous container keeps serving."""

    code = "deploy_failed"


class ModelUnavailable(StepFailed):
    """A build's model could not be had from the registry as recorded (missing, tampered, refused):
    nothing was deployed with it."""

    code = "model_unavailable"


class HostKeyError(InfrastructureError):
    """A deploy host presented an unknown or changed SSH host key."""

    code = "host_key_rejected"


class Cancelled(OrchestratorError):
    """The build was cancelled while this step ran."""

    code = "cancelled"
    http_status = 409
    step_status = "cancelled"


class Fenced(OrchestratorError):
    """This worker no longer holds the build's lease or the environment's lock (it stalled past its
    lease and the janitor, or another deploy, took over). It stops at once and changes nothing more on
    any host, not even to roll back: the new holder owns them. The build ends ``error`` like a lost
    worker's."""

    code = "fenced"
    http_status = 409


class StepTimeout(StepFailed):
    """A step or the whole build exceeded its timeout."""

    code = "timeout"


# -- webhook intake ----------------------------------------------------------------------------------


class PayloadTooLarge(PayloadError):
    """A request body over the configured size limit (max_body_bytes)."""

    code = "payload_too_large"
    http_status = 413


class UnsupportedContentType(PayloadError):
    """A request body that is not application/json."""

    code = "unsupported_content_type"
    http_status = 415


# -- REST API and web forms ---------------------------------------------------------------------------


class Unauthorized(OrchestratorError):
    """No credentials were presented (no bearer token, not signed in)."""

    code = "unauthorized"
    http_status = 401


class Forbidden(OrchestratorError):
    """Credentials were presented but are not valid (wrong token, bad CSRF token)."""

    code = "forbidden"
    http_status = 403


class Superseded(OrchestratorError):
    """A deploy was skipped: a newer build is already deployed to that environment (not a failure).

    The runner records the step and the build as ``superseded`` and runs no further steps.
    """

    code = "superseded"
    step_status = "superseded"
