"""`hf:` sources through the real huggingface_hub client, against a loopback stand-in for the Hub.

The stand-in answers the few endpoints a download uses (file HEAD/GET under /resolve/, the
revision and tree APIs of a snapshot) from files on disk, so the fetcher's use of
huggingface_hub, its progress hook and its error mapping run for real without the internet.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gguf
import pytest

from appliance.models.fetch.fetcher import ModelFetcher, ModelFetchError
from tests.fixtures.tinybert import write_tiny_bert
from tests.fixtures.tinymodel import write_tiny_llama

COMMIT = "c" * 40


def hub_handler(repos: dict[str, dict[str, bytes]]) -> type[BaseHTTPRequestHandler]:
    class Hub(BaseHTTPRequestHandler):
        def answer(self, status: int, body: bytes = b"", **headers: str) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key.replace("_", "-"), value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def route(self) -> None:
            path = self.path.split("?")[0].strip("/").split("/")
            if path[:2] == ["api", "models"] and "/".join(path[2:4]) in repos:
                files = repos["/".join(path[2:4])]
                if path[4] == "tree":
                    listing = [
                        {"type": "file", "path": name, "size": len(data), "oid": f"{i:040x}"}
                        for i, (name, data) in enumerate(files.items())
                    ]
                    self.answer(200, json.dumps(listing).encode())
                else:  # revision info
                    siblings = [{"rfilename": name} for name in files]
                    info = {"id": "/".join(path[2:4]), "sha": COMMIT, "siblings": siblings}
                    self.answer(200, json.dumps(info).encode())
                return
            repo, name = "/".join(path[:2]), "/".join(path[4:])
            if path[2:3] == ["resolve"] and name in repos.get(repo, {}):
                data = repos[repo][name]
                self.answer(
                    200, data, ETag=f'"{hashlib.sha1(data).hexdigest()}"', X_Repo_Commit=COMMIT
                )
                return
            self.answer(404, X_Error_Code="EntryNotFound" if repo in repos else "RepoNotFound")

        do_GET = route
        do_HEAD = route

        def log_message(self, *args: object) -> None:
            pass

    return Hub


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("hub")
    bert = write_tiny_bert(root / "bert")
    repos = {
        "owner/tiny": {"tiny.gguf": write_tiny_llama(root / "tiny.gguf").read_bytes()},
        "owner/bert": {
            str(p.relative_to(bert)): p.read_bytes() for p in bert.rglob("*") if p.is_file()
        },
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), hub_handler(repos))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_single_file_with_byte_progress(tmp_path: Path, hub: str) -> None:
    fetcher = ModelFetcher(tmp_path / "store", hf_endpoint=hub)
    seen: list[tuple[str, float | None, str]] = []
    out = fetcher.ensure("tiny", "hf:owner/tiny/tiny.gguf", None, lambda *a: seen.append(a))
    assert out == tmp_path / "store" / "tiny.gguf"
    assert out.read_bytes() == write_tiny_llama(tmp_path / "expected.gguf").read_bytes()
    assert ("download", 1.0) in [(s, f) for s, f, _ in seen]
    assert not list((tmp_path / "store").glob(".fetch-*"))


def test_whole_repository_converted_as_bert(tmp_path: Path, hub: str) -> None:
    fetcher = ModelFetcher(tmp_path / "store", hf_endpoint=hub)
    out = fetcher.ensure("emb", "hf:owner/bert", "bert")
    assert gguf.GGUFReader(out).fields["general.architecture"].contents() == "bert"


@pytest.mark.parametrize(
    ("source", "convert"), [("hf:owner/tiny/missing.gguf", None), ("hf:owner/nothere", "bert")]
)
def test_missing_file_or_repo_is_not_found_not_offline(
    tmp_path: Path, hub: str, source: str, convert: str | None
) -> None:
    fetcher = ModelFetcher(tmp_path / "store", hf_endpoint=hub)
    with pytest.raises(ModelFetchError, match="was not found on Hugging Face"):
        fetcher.ensure("x", source, convert)
