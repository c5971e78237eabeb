"""One error hierarchy for the orchestrator. Every error carries the context a user needs to act."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every error this package raises on purpose.

    ``code`` is a stable machine-readable name (used in API error bodies);
    ``context`` holds the facts that explain the error (file, key, build, host...).
    """

    code = "error"

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


class PayloadError(OrchestratorError):
    """A webhook or API payload is malformed or lacks required fields."""

    code = "bad_payload"


class StoreUnavailable(OrchestratorError):
    """Redis cannot be reached; callers answer 503 so the sender retries."""

    code = "store_unavailable"


class NotFound(OrchestratorError):
    """A build, delivery or environment that does not exist."""

    code = "not_found"


class Conflict(OrchestratorError):
    """An action that does not apply to the current state (cancel a finished build...)."""

    code = "conflict"


class PipelineError(OrchestratorError):
    """pipeline.yaml is invalid; context has file, line and key."""

    code = "pipeline_error"


class StepFailed(OrchestratorError):
    """A step ran and failed on its own terms (non-zero exit, failed health check, failed gate)."""

    code = "step_failed"


class InfrastructureError(OrchestratorError):
    """Something the build depends on broke (daemon down, clone failed, host unreachable)."""

    code = "infrastructure_error"


class DeployError(StepFailed):
    """A deploy failed (health check, swap); the previous container keeps serving."""

    code = "deploy_failed"


class HostKeyError(InfrastructureError):
    """A deploy host presented an unknown or changed SSH host key."""

    code = "host_key_rejected"


class Cancelled(OrchestratorError):
    """The build was cancelled while this step ran."""

    code = "cancelled"


class StepTimeout(StepFailed):
    """A step or the whole build exceeded its timeout."""

    code = "timeout"


# -- webhook intake (issue 4): the HTTP status each maps to is in orchestrator/webhooks.py --------


class PayloadTooLarge(PayloadError):
    """A request body over the configured size limit (max_body_bytes)."""

    code = "payload_too_large"


class UnsupportedContentType(PayloadError):
    """A request body that is not application/json."""

    code = "unsupported_content_type"


# -- REST API and web forms (issue 7): the HTTP status each maps to is in orchestrator/api.py ------


class Unauthorized(OrchestratorError):
    """No credentials were presented (no bearer token, not signed in)."""

    code = "unauthorized"


class Forbidden(OrchestratorError):
    """Credentials were presented but are not valid (wrong token, bad CSRF token)."""

    code = "forbidden"


class Superseded(OrchestratorError):
    """A deploy was skipped: a newer build is already deployed to that environment (not a failure).

    The runner records the step and the build as ``superseded`` and runs no further steps.
    """

    code = "superseded"
