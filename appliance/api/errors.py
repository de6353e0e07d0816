"""The one mapping from appliance errors to HTTP responses, in OpenAI's error body."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from appliance.errors import ApplianceError

log = logging.getLogger("appliance.api")


def error_body(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_enc = msgspec.json.Encoder()


async def send_error(
    send: Any, exc: ApplianceError, *, headers: dict[str, str] | None = None
) -> None:
    """Answer with `exc` from plain ASGI (the wrappers that run before routing), in the same body
    and status the exception handlers below give it; `headers` are added to the error's own."""
    body = _enc.encode(error_body(exc.message, exc.type, exc.code, exc.param))
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    out += [(k.lower().encode(), v.encode()) for k, v in {**exc.headers, **(headers or {})}.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": out})
    await send({"type": "http.response.body", "body": body})


def appliance_error_handler(_: Request[Any, Any, Any], exc: ApplianceError) -> Response[Any]:
    return Response(
        error_body(exc.message, exc.type, exc.code, exc.param),
        status_code=exc.status,
        headers=exc.headers,
        media_type=MediaType.JSON,
    )


_REQUIRED = re.compile(r"required field `([^`]+)`")


def _param(message: str, key: Any) -> str | None:
    """The dotted path of the field a decoding error is about (`messages[1].tool_calls[0].function`).

    Litestar gives the location inside the body (`data.` stripped) or the parameter's name, and
    msgspec names a missing field only in its message."""
    where = (
        str(key).replace("[...]", "") if key not in (None, "", "n/a", "data") else None
    )  # [...]: a dict's value
    m = _REQUIRED.search(message)
    if m:
        return f"{where}.{m.group(1)}" if where else m.group(1)
    return where


def validation_error_handler(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    details = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    param = None
    for d in details:
        if isinstance(d, dict):
            message = str(d.get("message"))
            field = _param(message, d.get("key"))
            param = param or field
            parts.append(f"{message} at `{field}`" if field and field not in message else message)
    message = "Invalid request body" + (": " + "; ".join(parts) if parts else f": {exc.detail}")
    return Response(
        error_body(
            message + ". Check the field against the API reference.",
            "invalid_request_error",
            "invalid_request",
            param,
        ),
        status_code=400,
        media_type=MediaType.JSON,
    )


def http_error_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return Response(
        error_body(str(exc.detail), type_, str(exc.status_code)),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type=MediaType.JSON,
    )


def unexpected_error_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, RecursionError) and "deserializ" in str(exc):
        # msgspec refuses JSON nested deeper than Python's recursion limit while Litestar reads
        # the body; Litestar lets that through as an unexpected error
        return Response(
            error_body(
                "the JSON body is nested too deeply; send a flatter document",
                "invalid_request_error",
                "invalid_request",
            ),
            status_code=400,
            media_type=MediaType.JSON,
        )
    log.exception("unhandled error", exc_info=exc)
    return Response(
        error_body(
            f"internal error: {exc!r}. See the daemon log.", "server_error", "internal_error"
        ),
        status_code=500,
        media_type=MediaType.JSON,
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApplianceError: appliance_error_handler,
    ValidationException: validation_error_handler,
    HTTPException: http_error_handler,
    Exception: unexpected_error_handler,
}
