"""A real OCI registry on a loopback port for image tests: Debian's docker-registry (CNCF
Distribution), images pushed into it with skopeo.

- `LocalRegistry.start(dir, token_auth=...)` runs `docker-registry serve` on 127.0.0.1 with a
  random port and filesystem storage under `dir`. With token auth the registry requires bearer
  tokens signed by a key made here with openssl; `TokenServer` is the token service it names
  as its realm (RS256 JWTs, with the certificate in `x5c`, as Distribution verifies them).
- `push(layout, name)` copies an OCI layout into it with skopeo.
- `CuttingProxy` sits in front of a registry, records each request's Range header, and can cut
  the next blob download off halfway, so a pull is really interrupted mid-transfer.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

TOOLS = ("docker-registry", "skopeo", "openssl")


def have_registry_tools() -> bool:
    return all(shutil.which(t) for t in TOOLS)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Hands out pull/push tokens to anyone who asks (the registry's auth is what is tested:
    the client must follow the challenge and send the token)."""

    key: Path
    cert: Path
    issued: list[str] = field(default_factory=list)
    port: int = 0
    server: http.server.ThreadingHTTPServer | None = None

    def token(self, service: str, scope: str) -> str:
        cert_der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            capture_output=True,
            check=True,
        ).stdout
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(cert_der).decode()]}
        access = []
        if scope:
            kind, name, actions = scope.split(":", 2)
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": "appliance-test",
            "sub": "tester",
            "aud": service,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": str(now) + str(len(self.issued)),
            "access": access,
        }
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing.encode(),
            capture_output=True,
            check=True,
        ).stdout
        self.issued.append(scope)
        return f"{signing}.{_b64(sig)}"

    def start(self) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlparse

                q = parse_qs(urlparse(self.path).query)
                body = json.dumps(
                    {"token": outer.token(q.get("service", [""])[0], q.get("scope", [""])[0])}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@dataclass
class LocalRegistry:
    port: int
    root: Path
    proc: subprocess.Popen[bytes]
    tokens: TokenServer | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    @contextlib.contextmanager
    def start(cls, root: Path, *, token_auth: bool = False) -> Iterator[LocalRegistry]:
        root.mkdir(parents=True, exist_ok=True)
        port = _port()
        config = (
            "version: 0.1\n"
            "log:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        tokens = None
        if token_auth:
            key, cert = root / "key.pem", root / "cert.pem"
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    str(key),
                    "-out",
                    str(cert),
                    "-days",
                    "2",
                    "-subj",
                    "/CN=appliance-test",
                ],
                capture_output=True,
                check=True,
            )
            tokens = TokenServer(key, cert)
            tokens.start()
            config += (
                "auth:\n  token:\n"
                f"    realm: http://127.0.0.1:{tokens.port}/token\n"
                "    service: appliance-test-registry\n"
                "    issuer: appliance-test\n"
                f"    rootcertbundle: {cert}\n"
            )
        (root / "config.yml").write_text(config)
        log = (root / "registry.log").open("wb")
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=log
        )
        reg = cls(port, root, proc, tokens)
        try:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://{reg.host}/v2/", timeout=1).status_code in (200, 401):
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"docker-registry did not start: {(root / 'registry.log').read_text()}"
                    )
                time.sleep(0.05)
            yield reg
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
            log.close()
            if tokens is not None:
                tokens.stop()

    def push(self, layout: Path, name: str, tag: str = "latest") -> None:
        args = ["skopeo", "copy", "--dest-tls-verify=false", "--insecure-policy"]
        if self.tokens is not None:
            args += ["--dest-creds", "tester:secret"]
        subprocess.run(
            [*args, f"oci:{layout}:{tag}", f"docker://{self.host}/{name}"],
            capture_output=True,
            check=True,
            timeout=60,
        )

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.root / "data/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


class CuttingProxy:
    """An HTTP proxy to a registry that records Range headers and can cut one blob off."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.ranges: list[str | None] = []
        self.cut_next_blob = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("accept", "range", "authorization")
                }
                if "/blobs/" in self.path:
                    outer.ranges.append(self.headers.get("Range"))
                with (
                    httpx.Client(follow_redirects=True) as c,
                    c.stream("GET", f"http://{outer.upstream}{self.path}", headers=headers) as r,
                ):
                    body = r.read()
                    self.send_response(r.status_code)
                    for k, v in r.headers.items():
                        if k.lower() in (
                            "content-type",
                            "docker-content-digest",
                            "www-authenticate",
                            "content-range",
                        ):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if "/blobs/" in self.path and outer.cut_next_blob and len(body) > 1000:
                        outer.cut_next_blob = False
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
