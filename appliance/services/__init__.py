"""Services: the use cases the API and CLI call (chat, models, sandboxes, sessions, agents).

A service takes typed input, drives the lower layers (appliance.models, appliance.sandbox,
appliance.store, appliance.telemetry) and returns typed output. It never imports litestar.
"""
