"""Structured logs on stderr, readable in a terminal and in the journal.

Every line is logfmt (`key=value` pairs), so `journalctl -u appliance | grep trace=trc_...` finds
all lines of one request, and log tools parse it without a schema. Inside a request the trace id
is added to every line (`trace=`), whoever logs it. Extra fields come from
`log.info("...", extra={"fields": {"model": m, "ms": 12}})`.

Under systemd (JOURNAL_STREAM is set) the journal adds its own timestamps, so lines carry none;
instead each starts with the kernel-style `<N>` priority prefix that journald reads as the
entry's level, and tracebacks stay on the same line (escaped) so one error is one journal entry.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

from appliance.telemetry.tracing import current_trace_id

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def under_journald(env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether stderr is connected to the journal (systemd sets JOURNAL_STREAM then)."""
    return bool((env if env is not None else os.environ).get("JOURNAL_STREAM"))


def _value(v: Any) -> str:
    s = str(v)
    if s and not any(c in s for c in ' "=\n\t\\'):
        return s
    return (
        '"'
        + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        + '"'
    )


class TraceIdFilter(logging.Filter):
    """Adds `trace_id` (the current request's, or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            record.trace_id = current_trace_id()
        return True


class LogfmtFormatter(logging.Formatter):
    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, Any]] = []
        if not self.journal:
            t = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            pairs.append(("ts", f"{t}.{int(record.msecs):03d}"))
        pairs += [
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            pairs += list(fields.items())
        trace = getattr(record, "trace_id", None)
        if trace:
            pairs.append(("trace", trace))
        line = " ".join(f"{k}={_value(v)}" for k, v in pairs)
        if record.exc_info:
            exc = self.formatException(record.exc_info)
            line += f" exc={_value(exc)}" if self.journal else "\n" + exc
        if self.journal:
            line = f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def configure_logging(
    *, verbose: bool = False, stream: TextIO | None = None, journal: bool | None = None
) -> None:
    """Send every logger (uvicorn's too) to stderr in logfmt; replaces earlier handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter(journal=under_journald() if journal is None else journal))
    handler.addFilter(TraceIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
