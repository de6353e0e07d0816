"""The token policy: when a token is needed, and what each refusal says (never the token)."""

from __future__ import annotations

import pytest

from appliance.access import ApiAccess, is_loopback


class FakeTokens:
    def __init__(self, valid: set[str]) -> None:
        self.valid = valid

    def count_valid(self) -> int:
        return len(self.valid)

    def verify(self, plain: str) -> object | None:
        return object() if plain in self.valid else None


def access(valid: set[str], host: str = "127.0.0.1") -> ApiAccess:
    return ApiAccess(FakeTokens(valid), host=host)  # type: ignore[arg-type]


def test_loopback_without_tokens_is_open_whatever_the_client_sends() -> None:
    a = access(set())
    assert a.check(None) is None
    assert a.check("Bearer sk-anything-the-sdk-was-given") is None


def test_once_a_token_exists_every_request_needs_it() -> None:
    a = access({"apl_good"})
    missing = a.check(None)
    assert missing is not None and missing.status == 401
    assert "appliance token create" in missing.message
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert a.check("Bearer apl_good") is None
    assert a.check("bearer  apl_good ") is None


@pytest.mark.parametrize(
    "header", ["Bearer apl_wrong", "Basic YWxhZGRpbjpvcGVu", "Bearer", "apl_good"]
)
def test_wrong_tokens_and_schemes_are_refused_without_echoing_them(header: str) -> None:
    refusal = access({"apl_good"}).check(header)
    assert refusal is not None and refusal.status == 401 and refusal.type == "authentication_error"
    assert "apl_good" not in refusal.message and "apl_wrong" not in refusal.message


def test_a_non_loopback_bind_always_needs_a_token() -> None:
    a = access(set(), host="0.0.0.0")
    assert a.always_required
    assert a.check(None) is not None
    assert a.check("Bearer whatever") is not None


def test_only_health_is_open() -> None:
    a = access({"t"})
    assert not a.needs_check("/api/health")
    assert a.needs_check("/api/health/")
    assert a.needs_check("/metrics") and a.needs_check("/v1/models") and a.needs_check("/mcp")


@pytest.mark.parametrize(
    ("host", "loop"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.20", False),
    ],
)
def test_loopback_addresses(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop
