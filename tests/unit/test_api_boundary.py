"""The boundary's decisions, from the config: which hosts and origins, which body caps."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.api.boundary import BodyLimits, BoundaryPolicy, MiB, is_json, split_authority
from appliance.config import Config, ConfigError, SandboxConfig, ServerConfig, load_toml_struct


def policy(names: set[str] | None = None, **server: object) -> BoundaryPolicy:
    cfg = Config(server=ServerConfig(**server))  # type: ignore[arg-type]
    return BoundaryPolicy.from_config(
        cfg, local_names=lambda: names or {"box", "box.lan", "192.168.1.7"}
    )


def test_authorities_parse_like_host_headers() -> None:
    assert split_authority("LocalHost:8420") == ("localhost", "8420")
    assert split_authority("[::1]:99") == ("[::1]", "99")
    assert split_authority("[::1]") == ("[::1]", None)
    assert split_authority("example.com.") == ("example.com", None)
    for bad in ("", ":80", "a:b", "[::1", "[::1]x", "h:123456", "::1"):
        assert split_authority(bad) is None, bad


def test_a_loopback_bind_answers_to_loopback_names_on_any_port() -> None:
    p = policy()
    for host in ("localhost", "localhost:1", "127.0.0.1:8420", "[::1]:8420", "[::1]"):
        assert p.host_allowed(host), host
    for host in (
        "evil.example:8420",
        "box",
        "192.168.1.7:8420",
        "127.0.0.2",
        "localhost.evil",
        "0.0.0.0:8420",
        None,
        "",
    ):
        assert not p.host_allowed(host), host


def test_allowed_hosts_add_names_with_or_without_a_port() -> None:
    p = policy(allowed_hosts=["Proxy.Example", "lan-box:8443", "fe80::1"])
    assert p.host_allowed("proxy.example:80") and p.host_allowed("PROXY.example")
    assert p.host_allowed("lan-box:8443") and not p.host_allowed("lan-box:8420")
    assert p.host_allowed("[fe80::1]:8420")


def test_a_network_bind_also_answers_to_its_address_and_the_machine_names() -> None:
    p = policy(host="192.168.1.7")
    for host in ("192.168.1.7:8420", "box:8420", "box.lan", "localhost"):
        assert p.host_allowed(host), host
    assert not p.host_allowed("evil.example:8420")
    wildcard = policy(host="0.0.0.0")
    assert wildcard.host_allowed("192.168.1.7:8420") and not wildcard.host_allowed("0.0.0.0:8420")


def test_origins_loopback_own_and_configured() -> None:
    p = policy(cors_origins=["https://App.example/"], allowed_hosts=["ai.example"])
    for origin in (
        "http://localhost:3000",
        "https://127.0.0.1:9",
        "http://[::1]:5173",
        "http://localhost",
    ):
        assert p.origin_allowed(origin, "127.0.0.1:8420"), origin
    assert p.origin_allowed("https://app.example", "127.0.0.1:8420")
    assert p.origin_allowed("https://ai.example", "ai.example"), "same origin as the Host"
    assert not p.origin_allowed("https://ai.example", "127.0.0.1:8420")
    for origin in (
        "null",
        "http://evil.example",
        "file://",
        "chrome-extension://abc",
        "ftp://localhost",
        "http://localhost.evil.example",
        "https://app.example:444",
    ):
        assert not p.origin_allowed(origin, "127.0.0.1:8420"), origin


def test_json_media_types() -> None:
    assert is_json("application/json") and is_json("application/problem+json")
    assert not is_json("text/plain") and not is_json("text/json") and not is_json(None)
    assert not is_json("+json")


def test_body_caps_come_from_the_config() -> None:
    limits = BodyLimits.from_config(Config(sandbox=SandboxConfig(max_file_mb=30)))
    assert limits.json.limit == 8 * MiB
    assert limits.upload.limit == 30 * MiB and limits.upload.setting == "sandbox.max_file_mb"
    assert limits.run.limit == 40 * MiB + 8 * MiB, "one file as base64 plus the JSON cap"
    assert BodyLimits.from_config(Config()).run.limit < 120 * 1000 * 1000, "the 120 MB run body"
    set_run = BodyLimits.from_config(
        Config(server=ServerConfig(max_run_body_mb=2, max_body_mb=0.5))
    )
    assert (set_run.run.limit, set_run.json.limit) == (2 * MiB, MiB // 2)


def test_handlers_name_their_body_class() -> None:
    from appliance.api.app import create_app
    from tests.unit.test_api_no_deprecations import stand_in_appliance

    app = create_app(stand_in_appliance())
    p = BoundaryPolicy.from_config(Config(), app.routes)
    assert p.body_rule("POST", "/api/run").setting == "server.max_run_body_mb"
    assert p.body_rule("POST", "/api/sandboxes/sbx_1/exec").setting == "server.max_run_body_mb"
    upload = p.body_rule("PUT", "/api/sandboxes/sbx_1/files/dir/a.txt")
    assert upload.kind == "upload" and upload.setting == "sandbox.max_file_mb"
    assert p.body_rule("GET", "/api/sandboxes/sbx_1/files/a.txt").kind == "json"
    assert p.body_rule("POST", "/v1/chat/completions").setting == "server.max_body_mb"
    assert p.body_rule("POST", "/api/run/x").setting == "server.max_body_mb"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('cors_origins = ["*"]', "server"),
        ('cors_origins = ["https://a.example/path"]', "server"),
        ('allowed_hosts = ["http://a.example"]', "server"),
        ("max_body_mb = 0", "server"),
    ],
)
def test_bad_boundary_settings_name_the_key(tmp_path: Path, table: str, key: str) -> None:
    f = tmp_path / "config.toml"
    f.write_text(f"[server]\n{table}\n")
    with pytest.raises(ConfigError) as info:
        load_toml_struct(f, Config)
    assert info.value.key == key and str(f) in info.value.message
