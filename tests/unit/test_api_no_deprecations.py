"""The HTTP app builds without Litestar deprecation warnings.

Litestar checks every handler's parameters when the app is built and warns about the declaration
styles Litestar 3 drops (inferred path and query parameters, inferred dependencies, `data` without
a body marker). A handler declared the old way would stop working on the upgrade; here it fails
now. The app is built with `create_app`, as the daemon builds it, around a stand-in Appliance:
building reads a few of its attributes and calls nothing.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.exceptions import LitestarDeprecationWarning

from appliance.api.app import create_app
from appliance.api.sandboxes import create_sandbox_app
from appliance.config import Config


async def _nothing() -> None:
    return None


def stand_in_appliance() -> Any:
    """What create_app reads from an Appliance while it builds (the lifecycle hooks and the
    objects the ASGI wrappers keep); none of it is used until a request arrives."""
    return SimpleNamespace(
        start=_nothing,
        stop=_nothing,
        access=None,
        store=None,
        telemetry=None,
        events=None,
        config=Config(),
    )


def test_litestar_deprecations_are_deprecation_warnings() -> None:
    # the filter below catches Litestar's warnings only through this subclassing
    assert issubclass(LitestarDeprecationWarning, DeprecationWarning)


def test_a_handler_declared_the_old_way_fails_the_build() -> None:
    """The check below can fail: an inferred query parameter is refused while the app builds."""

    @get("/old")
    async def old_style(limit: int = 10) -> int:
        return limit

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(LitestarDeprecationWarning, match="'limit' declared using deprecated"):
            Litestar(route_handlers=[old_style], openapi_config=None)


def test_the_daemon_app_builds_without_deprecation_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        app = create_app(stand_in_appliance())
    paths = {route.path for route in app.routes}
    assert {
        "/api/agents/{ref:str}",
        "/api/sandboxes/{sandbox_id:str}/files/{path:path}",
        "/v1/chat/completions",
        "/api/sessions/{session_id:str}/fork",
    } <= paths


def test_the_sandbox_only_app_builds_without_deprecation_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        create_sandbox_app(SimpleNamespace(start=_nothing, stop=_nothing))  # type: ignore[arg-type]
