"""Errors a sandbox user can cause, each with the HTTP status the API gives it.

They extend the one hierarchy in appliance.errors, so the API layer maps them like any other
ApplianceError; every message says what to do next.
"""

from __future__ import annotations

from appliance.errors import (
    ApplianceError,
    Conflict,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    SandboxError,
    ToolchainMissing,
)

__all__ = [
    "BatchTooLarge",
    "LanguageNotFound",
    "NetworkNotAllowed",
    "SandboxBusy",
    "SandboxLimitReached",
    "SandboxMemoryFull",
    "SandboxNotFound",
    "SandboxQueueFull",
    "SandboxUnavailable",
    "ToolchainMissing",
    "UploadTooLarge",
    "WorkspaceFileNotFound",
    "WorkspacePathRefused",
]


class LanguageNotFound(NotFound):
    code = "language_not_found"


class SandboxNotFound(NotFound):
    code = "sandbox_not_found"


class SandboxBusy(Conflict):
    """A stateful sandbox is already running a cell; cells of one sandbox run one at a time."""

    code = "sandbox_busy"


class NetworkNotAllowed(ApplianceError):
    status = 403
    type = "invalid_request_error"
    code = "network_not_allowed"


class WorkspacePathRefused(InvalidRequest):
    """A workspace path that is absolute, climbs out with '..', or goes through a bad symlink."""

    code = "workspace_path_refused"


class WorkspaceFileNotFound(NotFound):
    code = "file_not_found"


class UploadTooLarge(PayloadTooLarge):
    code = "upload_too_large"


class BatchTooLarge(PayloadTooLarge):
    """A batch with more cases than sandbox.max_batch_cases."""

    code = "batch_too_large"


class SandboxUnavailable(SandboxError):
    """The host cannot run sandboxes right now (bwrap missing, user namespaces blocked)."""

    status = 503
    code = "sandbox_unavailable"


class SandboxLimitReached(SandboxError):
    """Too many stateful sandboxes exist at once."""

    status = 503
    code = "sandbox_limit_reached"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class SandboxMemoryFull(SandboxError):
    """The sandboxes' memory budget has no room for another one right now (admission.py)."""

    status = 503
    code = "sandbox_memory_full"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class SandboxQueueFull(QueueFull):
    code = "sandbox_queue_full"
