"""The one error hierarchy of the appliance.

Every error a user can cause is an ApplianceError whose message says what went wrong and what to
do next. Each subclass carries the HTTP status and OpenAI-style `type`/`code` the API layer uses
when it turns the error into a response (appliance.api.errors is the only place that does), so
nothing below the API knows about HTTP frameworks.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of all errors the appliance reports to users."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequest(ApplianceError):
    """The request itself is wrong: a bad field, a missing value, a value out of range."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class NotFound(ApplianceError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(ApplianceError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(ApplianceError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class Forbidden(ApplianceError):
    """The request comes from somewhere it may not (a foreign Host or Origin)."""

    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class UnsupportedMediaType(ApplianceError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class Unauthorized(ApplianceError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ConfigError(ApplianceError):
    """A config or profile file is invalid; the message names the file and the key."""

    code = "config_error"

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        where = ":".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message, param=key)
        self.file = file
        self.key = key


# --- model runtime -------------------------------------------------------------------------


class ModelNotFound(NotFound):
    code = "model_not_found"


class ModelUnavailable(ApplianceError):
    """The model exists but cannot serve right now (load failed, worker died)."""

    status = 503
    code = "model_unavailable"


class WorkerCrashed(ApplianceError):
    """The worker process serving a request died; the daemon itself is fine."""

    status = 502
    code = "worker_crashed"


class WorkerTimeout(ApplianceError):
    """The worker process serving a request stopped answering and was killed."""

    status = 504
    code = "worker_timeout"


class InsufficientMemory(ApplianceError):
    """The model cannot fit the memory budget even after evicting idle models."""

    status = 507
    code = "insufficient_memory"


class InsufficientStorage(ApplianceError):
    """A model file does not fit the free space of the disk it must go to."""

    status = 507
    code = "insufficient_storage"


class QueueFull(ApplianceError):
    """Too many requests are waiting for this model; retry after the given seconds."""

    status = 503
    type = "server_error"
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class RequestCancelled(ApplianceError):
    status = 499
    code = "cancelled"


# --- sandboxes -----------------------------------------------------------------------------


class SandboxError(ApplianceError):
    code = "sandbox_error"


class ToolchainMissing(SandboxError):
    status = 424
    type = "invalid_request_error"
    code = "toolchain_missing"
