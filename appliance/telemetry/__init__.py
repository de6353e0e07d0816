"""Telemetry: GPU (NVML), host figures, metrics, events, traces and usage.

For code inside the daemon:

    from appliance.telemetry.tracing import current_trace, span

    current_trace().tag(kind="turn", session_id=sid, agent=name)   # what this request is about
    with span("tool.call", tool=name) as s:                        # nests in open spans
        ...
        s.set(status="ok")

    telemetry = appliance.telemetry          # appliance.telemetry.recorder.Telemetry
    telemetry.sandbox_run(language, status, duration_s=..., cpu_s=..., session_id=None, agent=None)
    telemetry.turn_finished("ok" | "error" | "cancelled")
    telemetry.events.publish("session.turn.started", session_id=sid)   # the dashboard sees it
    telemetry.metrics.on_scrape(refresh_my_gauges)     # sync, quick: set gauges from live state

Usage recorded inside a trace tagged with a session and agent is accounted to them.
"""
