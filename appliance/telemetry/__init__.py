"""Telemetry: GPU (NVML), host figures, metrics, events and traces."""
