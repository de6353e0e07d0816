"""Language profiles: strict loading, placeholders, aliases, and toolchain resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.errors import ConfigError, ToolchainMissing
from appliance.sandbox.errors import LanguageNotFound
from appliance.sandbox.limits import SandboxLimits
from appliance.sandbox.profiles import ProfileCatalog, load_profile
from appliance.sandbox.toolchain import ToolSpec, install_root, resolve_tool

SHIPPED = Path(__file__).resolve().parents[2] / "profiles" / "sandboxes"
REQUIRED = {
    "python",
    "javascript",
    "bash",
    "sh",
    "perl",
    "c",
    "cpp",
    "java",
    "rust",
    "tcl",
    "sqlite",
}


def _write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.toml"
    path.write_text(text)
    return path


def _fake_tool(d: Path, name: str, script: str = "#!/bin/sh\necho hi\n") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_text(script)
    path.chmod(0o755)
    return path


def test_every_required_language_ships_and_loads() -> None:
    catalog = ProfileCatalog.load([SHIPPED])
    assert set(catalog.profiles) >= REQUIRED
    assert catalog.profiles["python"].repl == "python"
    assert catalog.profiles["javascript"].repl == "node"
    assert all(catalog.profiles[n].compile for n in ("c", "cpp", "java", "rust"))


def test_aliases_and_unknown_languages() -> None:
    catalog = ProfileCatalog.load([SHIPPED])
    assert catalog.canonical("JS") == "javascript"
    assert catalog.canonical("py") == "python"
    with pytest.raises(LanguageNotFound) as err:
        catalog.canonical("cobol")
    assert "python" in err.value.message and "/api/sandboxes/languages" in err.value.message


def test_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "bad",
        'file = "x.py"\nrun = ["{py}", "{file}"]\nrunn = []\n[tools.py]\nfind = ["python3"]\n',
    )
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert err.value.message.startswith(f"{path}:runn")


def test_unknown_key_inside_a_table(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "bad", 'file = "x"\nrun = ["x"]\n[tools.x]\nfind = ["x"]\n[limits]\nmemory = 5\n'
    )
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert "limits.memory" in err.value.message


def test_unknown_placeholder_is_an_error(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "bad",
        'file = "x"\nrun = ["{interpreter}", "{file}"]\n[tools.py]\nfind = ["python3"]\n',
    )
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert "run[0]" in err.value.message and "{interpreter}" in err.value.message


def test_later_directories_override_by_name(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "python",
        'title = "Mine"\nfile = "m.py"\nrun = ["{python}", "{file}"]\n[tools.python]\nfind = ["python3"]\n',
    )
    catalog = ProfileCatalog.load([SHIPPED, tmp_path, tmp_path / "missing-dir"])
    assert catalog.profiles["python"].title == "Mine"
    assert "bash" in catalog.profiles


def test_missing_toolchain_is_reported_not_raised_at_load(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "cobol",
        'file = "m.cob"\nrun = ["{cobc}", "{file}"]\n[tools.cobc]\nfind = ["no-such-cobol-compiler"]\n',
    )
    catalog = ProfileCatalog.load([tmp_path])
    with pytest.raises(ToolchainMissing) as err:
        catalog.resolve("cobol")
    assert "no-such-cobol-compiler" in err.value.message and "install" in err.value.message
    assert err.value.status == 424
    [info] = catalog.describe()
    assert not info.available and "no-such-cobol-compiler" in info.detail


def test_commands_are_filled_in(tmp_path: Path) -> None:
    tool = _fake_tool(tmp_path / "opt" / "lang" / "bin", "langc")
    _write(
        tmp_path / "p",
        "lang",
        f'file = "main.l"\ncompile = ["{{langc}}", "-m{{memory_mb}}", "{{file}}"]\n'
        f'run = ["./main", "--heap={{heap_mb}}"]\n[tools.langc]\nfind = ["{tool}"]\n',
    )
    lang = ProfileCatalog.load([tmp_path / "p"]).resolve("lang")
    limits = SandboxLimits(memory_mb=500)
    assert lang.compile_argv(limits) == [str(tool), "-m500", "main.l"]
    assert lang.run_argv(limits, ["a", "b"]) == ["./main", "--heap=300", "a", "b"]
    assert lang.toolchain_roots == [str(tmp_path / "opt" / "lang")]


def test_driver_replaces_the_source_file_in_the_run_command() -> None:
    lang = ProfileCatalog.load([SHIPPED]).resolve("python")
    argv = lang.driver_argv(lang.limits, 5)
    assert argv[-2:] == ["/opt/appliance/python_driver.py", "5"]


def test_tools_resolve_through_symlinks_to_their_install_root(tmp_path: Path) -> None:
    real = _fake_tool(tmp_path / "toolchains" / "v1" / "bin", "mylang-1.0")
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "mylang").symlink_to(real)
    tool = resolve_tool("mylang", ToolSpec(find=["mylang"]), path=str(shims))
    assert tool.exe == str(real)
    assert tool.root == str(tmp_path / "toolchains" / "v1")


def test_a_probe_can_name_the_real_executable_or_root(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    _fake_tool(root / "bin", "mycc")
    proxy = _fake_tool(tmp_path / "proxybin", "mycc", f"#!/bin/sh\necho {root}\n")
    tool = resolve_tool(
        "mycc", ToolSpec(find=["mycc"], probe=["--print-root"]), path=str(proxy.parent)
    )
    assert tool.exe == str(root / "bin" / "mycc")
    assert tool.root == str(root)


def test_a_failing_probe_says_so(tmp_path: Path) -> None:
    bad = _fake_tool(tmp_path / "bin", "broken", "#!/bin/sh\necho nope >&2\nexit 3\n")
    with pytest.raises(ToolchainMissing, match="nope"):
        resolve_tool("broken", ToolSpec(find=[str(bad)], probe=["--where"]))


def test_system_tools_need_no_mount_and_home_directories_are_never_bound() -> None:
    assert install_root("/usr/bin/python3.11") is None
    home = os.path.realpath(Path.home())
    assert install_root(f"{home}/bin/tool") == f"{home}/bin/tool"  # the file alone, never $HOME
    assert install_root("/opt/bin/tool") == "/opt/bin/tool"  # never all of /opt
    assert install_root("/opt/lang-2/bin/tool") == "/opt/lang-2"
