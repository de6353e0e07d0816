"""The browser boundary: what a request must look like before any route, or the token check, sees it.

A daemon on 127.0.0.1 with no tokens is open to local programs, and so, unless something says
no, to every web page in the user's browser: a page can send "simple" cross-site requests
(text/plain, form or multipart POSTs that need no preflight), and DNS rebinding lets it read the
answers by pointing its own name at 127.0.0.1. This layer says no, in front of every route
(mounted apps included), in this order:

1. Host allowlist. The Host header must name this daemon: `localhost`, `127.0.0.1` or `[::1]`
   (any port), a name in `server.allowed_hosts`, and on a non-loopback bind also the bind
   address, the machine's names and (for a wildcard bind) its interface addresses. A rebinding
   page sends its own name, so it gets 403 `host_not_allowed`.
2. Origin check. Browsers name the page's origin on every cross-site fetch, every POST and every
   EventSource. An `Origin` that is not loopback (http or https, any port), not this daemon's own
   (same scheme-less authority as Host) and not in `server.cors_origins` gets 403
   `origin_not_allowed`, for reads and writes alike. `Origin: null` (sandboxed frames, file: pages)
   is foreign. Configured origins get CORS headers on every response and their preflights
   (OPTIONS + Access-Control-Request-Method) are answered here with 204; anyone else's preflight
   is refused, so a browser never sends them a non-simple request either.
3. Content type. A request that carries a body must say `application/json` (or `*/*+json`,
   parameters allowed): 415 otherwise. The few routes that take raw bytes (the sandbox file
   upload) declare it with `opt={"body": "upload"}` on their handler; they refuse the content
   types a page can send without a preflight (text/plain, forms, multipart) instead.
4. Body size, before decoding. Content-Length is checked up front and the body is counted as it
   streams in (chunked bodies too), so nothing is buffered past the route's cap: 413, with the
   limit and the setting that raises it. Caps come from the config (`server.max_body_mb`,
   `server.max_run_body_mb`, `sandbox.max_file_mb`); handlers name the larger class they need
   with `opt={"body": "run"}`. Litestar's own `request_max_body_size` checks the same way but
   only for Litestar routes and from decorator constants; here one layer covers mounted apps too
   and takes its sizes from the config, so the app turns Litestar's off.

Refusals are OpenAI error bodies (appliance.api.errors.send_error), sent before the token check
so a hostile page learns nothing else and costs no store lookup.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.access import is_loopback
from appliance.api.errors import send_error
from appliance.config import Config
from appliance.errors import ApplianceError, Forbidden, PayloadTooLarge, UnsupportedMediaType

ASGIApp = Any
MiB = 1024 * 1024

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
"""Names a loopback client may put in Host (any port)."""

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SIMPLE_TYPES = frozenset(
    {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"}
)
"""Content types a web page may send cross-site without a preflight (the CORS safelist)."""
_CORS_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
_CORS_EXPOSE = b"X-Trace-Id, Retry-After, Mcp-Session-Id"
"""Response headers a configured origin's page may read: MCP clients in a browser need the session id."""
_CORS_DEFAULT_HEADERS = b"Authorization, Content-Type"
_HEADER_LIST = re.compile(rb"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")


class BodyTooLarge(PayloadTooLarge):
    """Raised from `receive` when a streamed body passes its cap (the app turns it into 413)."""


BodyKind = Literal["json", "upload"]


@dataclass(frozen=True)
class BodyRule:
    kind: BodyKind
    limit: int
    """Bytes."""
    setting: str
    """The config key that raises `limit`, for the 413's message."""


@dataclass(frozen=True)
class BodyLimits:
    """The body caps, in bytes, derived from the config once."""

    json: BodyRule
    run: BodyRule
    upload: BodyRule
    image: BodyRule
    """An image archive (POST /api/images/import): raw bytes, up to sandbox.max_import_mb."""

    @classmethod
    def from_config(cls, config: Config) -> BodyLimits:
        server, sandbox = config.server, config.sandbox
        json_bytes = int(server.max_body_mb * MiB)
        # one file of the largest size, as base64 (4 bytes per 3), plus room for the code and the rest
        derived = (sandbox.max_file_mb * MiB * 4 + 2) // 3 + json_bytes
        run_bytes = int(server.max_run_body_mb * MiB) if server.max_run_body_mb else derived
        return cls(
            json=BodyRule("json", json_bytes, "server.max_body_mb"),
            run=BodyRule("json", run_bytes, "server.max_run_body_mb"),
            upload=BodyRule("upload", sandbox.max_file_mb * MiB, "sandbox.max_file_mb"),
            image=BodyRule("upload", sandbox.max_import_mb * MiB, "sandbox.max_import_mb"),
        )


def _path_regex(path_format: str, parameters: dict[str, Any]) -> re.Pattern[str]:
    """A Litestar path template (`/api/x/{id}/files/{path}`) as a regex over the raw path."""
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", path_format):
        out.append(re.escape(path_format[pos : m.start()]))
        param = parameters.get(m.group(1))
        is_path = getattr(getattr(param, "type", None), "__name__", "") in ("Path", "PurePath")
        out.append(".*" if is_path else "[^/]+")
        pos = m.end()
    out.append(re.escape(path_format[pos:]))
    return re.compile("".join(out) + "$")


def route_body_rules(
    routes: Iterable[Any], limits: BodyLimits
) -> list[tuple[str, re.Pattern[str], BodyRule]]:
    """(method, path regex, rule) for every handler that declares `opt={"body": ...}`; every
    other body is JSON under `limits.json`."""
    rules: list[tuple[str, re.Pattern[str], BodyRule]] = []
    for route in routes:
        # an HTTP route has its handlers; a mounted ASGI app (/mcp) one handler, named no methods
        handlers = getattr(route, "route_handlers", None) or [getattr(route, "route_handler", None)]
        for handler in handlers:
            kind = (getattr(handler, "opt", None) or {}).get("body")
            if kind is None:
                continue
            rule = getattr(limits, kind, None)
            if not isinstance(rule, BodyRule):
                raise ValueError(
                    f"{route.path}: unknown body class {kind!r}; use run, upload or image"
                )
            regex = _path_regex(route.path_format, dict(route.path_parameters))
            methods = getattr(handler, "http_methods", None) or {"POST"}
            rules.extend((method, regex, rule) for method in sorted(methods))
    return rules


# --- Host and Origin ------------------------------------------------------------------------------


def split_authority(value: str) -> tuple[str, str | None] | None:
    """`host[:port]` (IPv6 in brackets) as (lowercased host, port or None); None if malformed."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            return None
        host, rest = v[: end + 1], v[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    else:
        host, sep, port_s = v.partition(":")
        port = port_s if sep else None
        host = host.rstrip(".")
    if not host or (port is not None and not (port.isdigit() and len(port) <= 5)):
        return None
    return host, port


def _host_entry(entry: str) -> str:
    """A configured host as the form Host headers use: a bare IPv6 address gets its brackets."""
    e = entry.strip().lower()
    try:
        if ipaddress.ip_address(e).version == 6:
            return f"[{e}]"
    except ValueError:
        pass
    return e


def machine_names() -> set[str]:
    """This machine's host names and interface addresses (Host forms), for a network bind."""
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    names.add(a.address.split("%")[0])
    except Exception:  # an exotic host: the names above still count
        pass
    return {_host_entry(n) for n in names if n}


@dataclass(frozen=True)
class BoundaryPolicy:
    """Who may talk to the daemon, decided once from the config."""

    hosts: frozenset[str]
    """Allowed Host names, any port."""
    host_ports: frozenset[tuple[str, str]]
    """Allowed (name, port) pairs, from `name:port` entries of server.allowed_hosts."""
    cors_origins: frozenset[str]
    limits: BodyLimits
    rules: list[tuple[str, re.Pattern[str], BodyRule]] = field(default_factory=list)

    @classmethod
    def from_config(
        cls,
        config: Config,
        routes: Iterable[Any] = (),
        local_names: Callable[[], set[str]] = machine_names,
    ) -> BoundaryPolicy:
        server = config.server
        hosts, host_ports = set(LOOPBACK_HOSTS), set()
        if not is_loopback(server.host):
            bind = _host_entry(server.host)
            if bind not in ("0.0.0.0", "[::]", ""):
                hosts.add(bind)
            hosts |= local_names()
        for entry in server.allowed_hosts:
            parsed = split_authority(_host_entry(entry))
            if parsed is None:
                continue  # ServerConfig refused anything unparseable already
            name, port = parsed
            if port is None:
                hosts.add(name)
            else:
                host_ports.add((name, port))
        origins = frozenset(o.strip().lower().rstrip("/") for o in server.cors_origins)
        limits = BodyLimits.from_config(config)
        return cls(
            frozenset(hosts),
            frozenset(host_ports),
            origins,
            limits,
            route_body_rules(routes, limits),
        )

    def host_allowed(self, host: str | None) -> bool:
        parsed = split_authority(host) if host else None
        if parsed is None:
            return False
        return parsed[0] in self.hosts or parsed in self.host_ports

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Loopback, the daemon's own (same authority as Host), or configured."""
        if origin in self.cors_origins:
            return True
        scheme, sep, authority = origin.partition("://")
        if not sep or scheme not in ("http", "https"):
            return False  # `null`, file:, chrome-extension: ...
        parsed = split_authority(authority)
        if parsed is None:
            return False
        if parsed[0] in LOOPBACK_HOSTS:
            return True
        return host is not None and split_authority(host) == parsed

    def body_rule(self, method: str, path: str) -> BodyRule:
        for m, regex, rule in self.rules:
            if m == method and regex.match(path):
                return rule
        return self.limits.json


def _media_type(content_type: str | None) -> str | None:
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower()


def is_json(media_type: str | None) -> bool:
    return media_type is not None and (
        media_type == "application/json" or ("/" in media_type and media_type.endswith("+json"))
    )


# --- the ASGI layer -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Headers:
    """The request headers the boundary reads, from one pass over the ASGI scope."""

    host: str | None = None
    origin: str | None = None
    content_type: str | None = None
    length: bytes | None = None
    chunked: bytes | None = None
    preflight: bytes | None = None

    @classmethod
    def read(cls, scope: Any) -> _Headers:
        h = cls()
        for key, value in scope.get("headers", ()):
            if key == b"host":
                h.host = value.decode("latin-1")
            elif key == b"origin":
                h.origin = value.decode("latin-1").strip().lower()
            elif key == b"content-type":
                h.content_type = value.decode("latin-1")
            elif key == b"content-length":
                h.length = value
            elif key == b"transfer-encoding":
                h.chunked = value
            elif key == b"access-control-request-method":
                h.preflight = value
        return h

    @property
    def has_body(self) -> bool:
        return self.chunked is not None or (
            self.length is not None and self.length.strip() not in (b"", b"0")
        )

    def announced_length(self) -> int:
        try:
            return int(self.length) if self.length is not None else -1
        except ValueError:
            return -1  # h11 refuses a malformed Content-Length before we see it


def _sender_refusal(policy: BoundaryPolicy, scope: Any, h: _Headers) -> Forbidden | None:
    """Host first (a rebound name), then Origin (a foreign page)."""
    if h.host is None and scope.get("http_version") == "1.0":
        pass  # HTTP/1.0 has no Host; browsers always send one
    elif not policy.host_allowed(h.host):
        return _host_refusal(h.host)
    if h.origin is not None and not policy.origin_allowed(h.origin, h.host):
        return _origin_refusal(h.origin)
    return None


def _body_refusal(method: str, path: str, h: _Headers, rule: BodyRule) -> ApplianceError | None:
    media = _media_type(h.content_type)
    if rule.kind == "upload":
        if media in _SIMPLE_TYPES:
            return UnsupportedMediaType(
                f"this route takes the file's raw bytes, and {media} is a type any web page may "
                "send; send Content-Type: application/octet-stream"
            )
    elif h.has_body and not is_json(media):
        said = f"Content-Type: {h.content_type}" if h.content_type else "no Content-Type"
        return UnsupportedMediaType(
            f"{method} {path} takes a JSON body, and the request says {said}; send "
            "Content-Type: application/json"
        )
    elif not h.has_body and media in _SIMPLE_TYPES:
        return UnsupportedMediaType(
            f"{method} {path} takes JSON or nothing, not {media}; send Content-Type: "
            "application/json or no body"
        )
    if h.announced_length() > rule.limit:
        return _too_large(method, path, rule)
    return None


class BrowserBoundary:
    def __init__(self, app: ASGIApp, policy: BoundaryPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        h = _Headers.read(scope)
        # a refusal leaves the body unread: the connection then closes rather than wait for it
        closing = {"Connection": "close"} if h.has_body else {}
        refusal: ApplianceError | None = _sender_refusal(self.policy, scope, h)
        if refusal is not None:
            await _refuse(kind, send, refusal, closing)
            return
        if kind == "websocket":
            await self.app(scope, receive, send)
            return
        cors_origin = h.origin if h.origin in self.policy.cors_origins else None
        method, path = scope["method"], scope["path"]
        if method == "OPTIONS" and h.origin is not None and h.preflight is not None:
            if cors_origin is not None:
                await _answer_preflight(scope, send, cors_origin)
            else:  # a loopback page that is not configured: it gets no CORS either
                await send_error(send, _origin_refusal(h.origin), headers=closing)
            return
        rule = None
        if h.has_body or method in _BODY_METHODS:
            rule = self.policy.body_rule(method, path)
            refusal = _body_refusal(method, path, h, rule)
            if refusal is not None:
                cors = _cors_headers(cors_origin) if cors_origin is not None else {}
                await send_error(send, refusal, headers={**cors, **closing})
                return
        if cors_origin is None and rule is None:
            await self.app(scope, receive, send)
            return
        await self._guarded(scope, receive, send, cors_origin, rule)

    async def _guarded(
        self, scope: Any, receive: Any, send: Any, cors_origin: str | None, rule: BodyRule | None
    ) -> None:
        """Call the app with the body counted against `rule` and CORS headers on the answer."""
        started = False
        too_large: BodyTooLarge | None = None
        seen = 0

        async def counted_receive() -> Any:
            nonlocal seen, too_large
            message = await receive()
            if rule is not None and message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > rule.limit:
                    too_large = _too_large(scope["method"], scope["path"], rule)
                    raise too_large
            return message

        async def send_with_headers(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                extra = []
                if cors_origin is not None:
                    extra += [
                        (k.lower().encode(), v.encode())
                        for k, v in _cors_headers(cors_origin).items()
                    ]
                if too_large is not None:  # the rest of the body is never read: close
                    extra.append((b"connection", b"close"))
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(
                scope, counted_receive if rule is not None else receive, send_with_headers
            )
        except BodyTooLarge as exc:  # an app that let it through (a mounted one): answer here
            if started:
                raise
            await send_error(send_with_headers, exc)


def _host_refusal(host: str | None) -> Forbidden:
    what = f"the host {host!r}" if host else "a request without a Host header"
    return Forbidden(
        f"this appliance does not answer to {what}; call it as localhost or 127.0.0.1, or add the "
        "name you use to server.allowed_hosts in the config (a web page that points its own name "
        "at this box, DNS rebinding, gets this answer)",
        code="host_not_allowed",
    )


def _origin_refusal(origin: str) -> Forbidden:
    return Forbidden(
        f"requests from the web origin {origin!r} are not allowed; if that page should use this "
        "appliance, add the origin to server.cors_origins in the config",
        code="origin_not_allowed",
    )


def _too_large(method: str, path: str, rule: BodyRule) -> BodyTooLarge:
    mib = rule.limit / MiB
    return BodyTooLarge(
        f"the request body is larger than {mib:g} MiB, the limit for {method} {path}; send less "
        f"(split the work over several requests), or raise {rule.setting} in the config"
    )


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Vary": "Origin",
        "Access-Control-Expose-Headers": _CORS_EXPOSE.decode(),
    }


async def _answer_preflight(scope: Any, send: Any, origin: str) -> None:
    asked = next(
        (v for k, v in scope.get("headers", ()) if k == b"access-control-request-headers"), b""
    )
    allow = (
        asked.strip()
        if asked.strip() and _HEADER_LIST.match(asked.strip())
        else _CORS_DEFAULT_HEADERS
    )
    headers = [(k.lower().encode(), v.encode()) for k, v in _cors_headers(origin).items()]
    headers += [
        (b"access-control-allow-methods", _CORS_METHODS),
        (b"access-control-allow-headers", allow),
        (b"access-control-max-age", b"600"),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(kind: str, send: Any, refusal: ApplianceError, headers: dict[str, str]) -> None:
    if kind == "websocket":
        await send({"type": "websocket.close", "code": 1008})
    else:
        await send_error(send, refusal, headers=headers)
