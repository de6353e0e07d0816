"""The browser boundary on a live daemon: what a web page in the user's browser can no longer do.

A page can send "simple" cross-site requests (text/plain, form, multipart POSTs, no preflight) and,
through DNS rebinding, requests whose Host is its own name. Each attack here is what a browser
would send; each gets its 4xx before any route runs, while the clients the appliance is made for
(httpx, the OpenAI SDK, a page on a loopback origin, a configured web app) keep working.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.api.app import create_app
from appliance.api.boundary import BoundaryPolicy
from appliance.api.ollama import PATHS as OLLAMA_PATHS
from appliance.app import Appliance
from appliance.config import load_config
from tests.integration.daemon import Daemon, running_daemon

APP_ORIGIN = "https://app.example"
RUN = {"language": "python", "code": "open('/workspace/ran', 'w').write('yes')"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("boundary")
    config = {
        "server": {"cors_origins": [APP_ORIGIN], "max_body_mb": 1},
        "sandbox": {"max_file_mb": 1},
    }
    with running_daemon(root, config=config) as d:
        yield d


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_a_simple_cross_site_post_does_not_run_code(
    daemon: Daemon, content_type: str | None
) -> None:
    import json

    headers = {"Content-Type": content_type} if content_type else {}
    with daemon.http() as c:
        r = c.post("/api/run", content=json.dumps(RUN).encode(), headers=headers)
    assert r.status_code == 415, r.text
    assert error_code(r) == "unsupported_media_type"
    assert "application/json" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/agents",
        "/api/sandboxes",
        "/v1/chat/completions",
        "/api/sessions",
        "/v1/responses",
        "/api/models",
    ],
)
def test_text_plain_is_refused_on_every_json_route(daemon: Daemon, path: str) -> None:
    with daemon.http() as c:
        r = c.post(path, content=b'{"model": "x"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415, (path, r.text)


def test_json_with_parameters_and_plus_json_are_accepted(daemon: Daemon) -> None:
    with daemon.http() as c:
        for ctype in ("application/json; charset=utf-8", "application/vnd.api+json"):
            r = c.post("/api/agents", content=b'{"name": 1}', headers={"Content-Type": ctype})
            assert r.status_code == 400, (ctype, r.text)  # reached validation: the type passed


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "https://evil.example:8443",
        "null",
        "file://",
        "http://localhost.evil.example",
    ],
)
def test_a_foreign_origin_is_refused_for_reads_and_writes(daemon: Daemon, origin: str) -> None:
    with daemon.http() as c:
        reads = c.get("/api/sessions", headers={"Origin": origin})
        writes = c.post("/api/run", json=RUN, headers={"Origin": origin})
    for r in (reads, writes):
        assert r.status_code == 403, (origin, r.status_code, r.text)
        assert error_code(r) == "origin_not_allowed"
        assert "server.cors_origins" in r.json()["error"]["message"]
        assert "access-control-allow-origin" not in r.headers
        assert r.headers["X-Trace-Id"].startswith("trc_")


def test_a_foreign_origin_gets_no_event_stream(daemon: Daemon) -> None:
    t0 = time.monotonic()
    with (
        httpx.Client(base_url=daemon.url, timeout=10) as c,
        c.stream(
            "GET",
            "/api/events",
            headers={"Origin": "http://evil.example", "Accept": "text/event-stream"},
        ) as r,
    ):
        assert r.status_code == 403
        assert r.headers["content-type"].startswith("application/json")
        r.read()
    assert time.monotonic() - t0 < 5, "refused at once, not after a stream"


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:8420",
        "evil.example",
        "127.0.0.1.nip.io:8420",
        "localhost.evil.example",
        "[::2]:8420",
        "10.0.0.1",
    ],
)
def test_a_rebound_host_is_refused(daemon: Daemon, host: str) -> None:
    with daemon.http() as c:
        for r in (
            c.get("/api/sessions", headers={"Host": host}),
            c.get("/api/traces", headers={"Host": host}),
            c.post("/api/run", json=RUN, headers={"Host": host}),
        ):
            assert r.status_code == 403, (host, r.text)
            assert error_code(r) == "host_not_allowed"
            assert "server.allowed_hosts" in r.json()["error"]["message"]


def test_the_loopback_names_are_hosts_on_any_port(daemon: Daemon) -> None:
    with daemon.http() as c:
        for host in (
            "localhost",
            "localhost:1234",
            "127.0.0.1",
            f"127.0.0.1:{daemon.port}",
            "[::1]",
            "[::1]:8420",
            "LOCALHOST:99",
        ):
            r = c.get("/api/sessions", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)


@pytest.mark.parametrize(
    "origin",
    ["http://localhost:3000", "http://127.0.0.1:9", "https://localhost", "http://[::1]:5173"],
)
def test_a_loopback_origin_is_allowed_without_cors_headers(daemon: Daemon, origin: str) -> None:
    with daemon.http() as c:
        got = c.get("/v1/models", headers={"Origin": origin})
        posted = c.post("/api/models/no-such-model/unload", headers={"Origin": origin})
        preflight = c.options(
            "/v1/chat/completions",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
    assert got.status_code == 200, got.text
    assert posted.status_code == 404 and error_code(posted) == "model_not_found"
    assert "access-control-allow-origin" not in got.headers
    assert preflight.status_code == 403, "only configured origins get preflights answered"


def test_a_configured_origin_gets_cors_headers_and_preflights(daemon: Daemon) -> None:
    with daemon.http() as c:
        pre = c.options(
            "/v1/chat/completions",
            headers={
                "Origin": APP_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
            },
        )
        got = c.get("/v1/models", headers={"Origin": APP_ORIGIN})
        refused = c.post(
            "/api/agents",
            content=b"{}",
            headers={"Origin": APP_ORIGIN, "Content-Type": "text/plain"},
        )
    assert pre.status_code == 204, pre.text
    assert pre.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    assert pre.headers["vary"] == "Origin"
    assert got.status_code == 200
    assert got.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "X-Trace-Id" in got.headers["access-control-expose-headers"]
    assert "Mcp-Session-Id" in got.headers["access-control-expose-headers"]  # an MCP client's
    assert "Origin" in got.headers["vary"]
    # its errors are readable by the page too
    assert (
        refused.status_code == 415 and refused.headers["access-control-allow-origin"] == APP_ORIGIN
    )


def test_the_file_upload_takes_bytes_but_not_a_type_a_page_can_send(daemon: Daemon) -> None:
    with daemon.http() as c:
        simple = c.put(
            "/api/sandboxes/sbx_none/files/a.txt",
            content=b"hi",
            headers={"Content-Type": "text/plain"},
        )
        octets = c.put(
            "/api/sandboxes/sbx_none/files/a.txt",
            content=b"hi",
            headers={"Content-Type": "application/octet-stream"},
        )
        bare = c.put("/api/sandboxes/sbx_none/files/a.txt", content=b"hi")
    assert simple.status_code == 415 and "octet-stream" in simple.json()["error"]["message"]
    for r in (octets, bare):  # the route ran: that sandbox does not exist (or sandboxes are off)
        assert r.status_code in (404, 503), r.text


def test_an_oversized_body_is_refused_before_it_is_read(daemon: Daemon) -> None:
    body = b'{"model": "x", "messages": [], "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    with daemon.http() as c:
        r = c.post(
            "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["code"] == "payload_too_large"
        assert "1 MiB" in err["message"] and "server.max_body_mb" in err["message"]
        assert c.get("/api/health").status_code == 200


def test_an_upload_past_sandbox_max_file_mb_is_refused_up_front(daemon: Daemon) -> None:
    with daemon.http() as c:
        r = c.put(
            "/api/sandboxes/sbx_none/files/big.bin",
            content=b"x" * (2 * 1024 * 1024),
            headers={"Content-Type": "application/octet-stream"},
        )
    assert r.status_code == 413, r.text
    assert "sandbox.max_file_mb" in r.json()["error"]["message"]


def test_a_chunked_body_without_length_is_cut_off_at_the_cap(daemon: Daemon) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"model": "x", "pad": "'
        for _ in range(64):  # 4 MiB, well past the 1 MiB cap
            sent += 65536
            yield b"x" * 65536
        yield b'"}'

    with httpx.Client(base_url=daemon.url, timeout=30) as c:
        r = c.post(
            "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    assert error_code(r) == "payload_too_large"


def test_deeply_nested_json_is_a_400(daemon: Daemon) -> None:
    with daemon.http() as c:
        for path in ("/v1/chat/completions", "/api/run", "/api/agents"):
            r = c.post(path, content=b"[" * 5000, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (path, r.text)
            assert "nested too deeply" in r.json()["error"]["message"]


def test_the_openai_sdk_still_works(daemon: Daemon) -> None:
    import openai

    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="none", max_retries=0)
    assert {m.id for m in client.models.list()} >= {"smollm2-135m-instruct"}


# --- every route, from the route table -------------------------------------------------------


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Any]:
    config = load_config(None, state_dir=str(tmp_path / "state"))
    appliance = await asyncio.to_thread(Appliance.from_config, config)
    yield create_app(appliance, manage_lifecycle=False)
    await appliance.store.aclose()


def body_routes(app: Any) -> list[tuple[str, str, Any]]:
    out = []
    for route in app.routes:
        path = route.path_format
        for name in route.path_parameters:
            path = path.replace("{" + name + "}", "x1")
        # a mounted ASGI app (/mcp) has one handler and takes its bodies with POST
        for handler in getattr(route, "route_handlers", None) or [route.route_handler]:
            methods = getattr(handler, "http_methods", None) or {"POST"}
            for method in methods & {"POST", "PUT", "PATCH", "DELETE"}:
                out.append((method, path, handler))
    return out


async def test_every_route_that_takes_a_body_refuses_what_a_page_can_send(app: Any) -> None:
    """Routes added later are covered without touching this test: each body-taking handler either
    takes JSON (`data`) or declares its raw body with opt={"body": "upload"} (or "image")."""
    routes = body_routes(app)
    assert len(routes) > 15
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        for method, path, handler in routes:
            params = handler.parsed_fn_signature.parameters
            declared = (handler.opt or {}).get("body")
            if "request" in params and "data" not in params and method != "DELETE":
                # raw-body classes: a file upload, an image archive (a larger cap)
                assert declared in ("upload", "image"), f"{method} {path} reads the raw body"
            for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
                r = await c.request(
                    method, path, content=b'{"a": 1}', headers={"Content-Type": ctype}
                )
                assert r.status_code == 415, (method, path, ctype, r.status_code, r.text)
                error = r.json()["error"]
                if path in OLLAMA_PATHS:  # Ollama's body: the message alone
                    assert "Content-Type: application/json" in error
                else:
                    assert error["code"] == "unsupported_media_type"


def test_mcp_bodies_get_the_run_cap_like_api_run(app: Any) -> None:
    """`run_code` over MCP carries files as base64 like `POST /api/run`, so its cap is the same."""
    config = load_config(None, state_dir="/nonexistent")
    policy = BoundaryPolicy.from_config(config, app.routes)
    assert policy.body_rule("POST", "/mcp") == policy.body_rule("POST", "/api/run")
    assert policy.body_rule("POST", "/mcp").setting == "server.max_run_body_mb"
