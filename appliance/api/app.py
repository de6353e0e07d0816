"""Build the Litestar application around an Appliance."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.di import Provide

from appliance.api.agents import AgentController
from appliance.api.auth import BearerAuth
from appliance.api.boundary import BoundaryPolicy, BrowserBoundary
from appliance.api.errors import EXCEPTION_HANDLERS
from appliance.api.images import ImageController
from appliance.api.mcp import mcp_mount
from appliance.api.models import ModelsController
from appliance.api.ollama import OllamaController, OllamaErrors
from appliance.api.openai import OpenAIController
from appliance.api.openapi import openapi_config
from appliance.api.ops import OpsController
from appliance.api.request import ApplianceRequest
from appliance.api.responses import ResponsesController
from appliance.api.sandboxes import SandboxController
from appliance.api.sessions import SessionController
from appliance.api.tracing import RequestTelemetry
from appliance.app import Appliance


def create_app(appliance: Appliance, *, manage_lifecycle: bool = True) -> Litestar:
    """The HTTP app. With manage_lifecycle the app starts and stops the Appliance itself."""

    def provide_appliance() -> Appliance:
        return appliance

    mcp, mcp_lifespan = mcp_mount(appliance)
    route_handlers: list[Any] = [
        OpsController,
        OpenAIController,
        ModelsController,
        SandboxController,
        ImageController,
        AgentController,
        SessionController,
        ResponsesController,
        OllamaController,
        mcp,
    ]

    app = Litestar(
        route_handlers=route_handlers,
        dependencies={"appliance": Provide(provide_appliance, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        on_startup=[appliance.start] if manage_lifecycle else [],
        on_shutdown=[appliance.stop] if manage_lifecycle else [],
        lifespan=[mcp_lifespan],
        openapi_config=openapi_config(),
        logging_config=None,  # logs are configured once, by appliance.telemetry.logs
        debug=False,
        request_class=ApplianceRequest,
        request_max_body_size=None,  # the boundary caps bodies, per route, from the config
    )
    # Plain ASGI around the whole handler, before routing: the browser boundary and then the token
    # check cover every route (mounted ones too), and every response, 401s, 403s and 404s
    # included, gets its trace id. On Ollama's paths every refusal leaves in Ollama's error body.
    policy = BoundaryPolicy.from_config(appliance.config, app.routes)
    app.asgi_handler = RequestTelemetry(
        OllamaErrors(
            BrowserBoundary(BearerAuth(app.asgi_handler, appliance.access, appliance.store), policy)
        ),
        appliance.telemetry,
        appliance.events,
    )
    return app
