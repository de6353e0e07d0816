"""Log lines: logfmt, the trace id inside a request, journald's form under systemd."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from appliance.telemetry.logs import configure_logging, under_journald
from appliance.telemetry.tracing import Tracer


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(journal: bool) -> tuple[list[str], str]:
    out = io.StringIO()
    configure_logging(stream=out, journal=journal)
    log = logging.getLogger("appliance.test")
    log.info("outside")
    tracer = Tracer()
    t = tracer.begin("request", "GET /x")
    token = tracer.activate(t)
    try:
        log.warning("request", extra={"fields": {"route": "/api/models/{model_id}", "status": 404}})
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log.exception("failed")
    finally:
        tracer.deactivate(token)
    return out.getvalue().splitlines(), t.id


@pytest.mark.usefixtures("restore_logging")
def test_terminal_lines_have_time_fields_and_trace_id() -> None:
    got, trace_id = lines(journal=False)
    assert got[0].startswith("ts=") and "level=info logger=appliance.test msg=outside" in got[0]
    assert "trace=" not in got[0]
    assert got[1].endswith(
        f"msg=request route=/api/models/{{model_id}} status=404 trace={trace_id}"
    )
    assert "level=warning" in got[1]
    assert any(line.startswith("Traceback") for line in got), (
        "tracebacks stay readable in a terminal"
    )


@pytest.mark.usefixtures("restore_logging")
def test_journal_lines_have_priority_no_time_and_one_line_per_entry() -> None:
    got, trace_id = lines(journal=True)
    assert len(got) == 3, "a traceback is escaped into its own line's exc= field"
    assert got[0].startswith("<6>level=info") and "ts=" not in got[0]
    assert got[1].startswith("<4>level=warning") and got[1].endswith(f"trace={trace_id}")
    assert got[2].startswith("<3>level=error") and 'exc="Traceback' in got[2] and "\\n" in got[2]


def test_journald_is_detected_from_journal_stream() -> None:
    assert under_journald({"JOURNAL_STREAM": "8:123456"})
    assert not under_journald({})
