"""The model hub against a live daemon and a loopback file server, with the real SmolLM2 GGUF.

The file server speaks HTTP Range and drops the connection at 40 % of the first download, so a
pull must resume to finish; then the pulled model answers a chat completion. A wrong sha256 leaves
neither a file nor a profile; a file larger than the disk is refused with 507 before a byte is
written; hostile sources, ids and digests are 400s; an Ollama-layout folder built here is
imported in place and served; `rm --files` removes the profile and the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource

from tests.conftest import require
from tests.integration.daemon import REPO, Daemon, free_port, running_daemon

CHAT = [{"role": "user", "content": "Say hello"}]


@dataclass
class FileServer:
    """Serves one file at /FILE.gguf (any name ending .gguf) with Range; `/huge.gguf` claims a
    petabyte. The first full GET of each name is cut off at `drop_at` of the file."""

    data: bytes
    drop_at: float = 0.4
    ranges: list[str] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)
    url: str = ""
    hf: dict[str, bytes] = field(default_factory=dict)
    """Files of the Hugging Face repository `org/smol` (HF_ENDPOINT is this server)."""
    hf_sha: dict[str, str] = field(default_factory=dict)
    """LFS sha256 the listing claims, where it should not be the file's own."""

    def start(self) -> ThreadingHTTPServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                size = 10**15 if self.path == "/huge.gguf" else len(owner.data)
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def tree(self) -> None:
                listing = [
                    {
                        "type": "file",
                        "path": name,
                        "size": len(data),
                        "oid": hashlib.sha1(data).hexdigest(),
                        "lfs": {
                            "size": len(data),
                            "oid": owner.hf_sha.get(name, hashlib.sha256(data).hexdigest()),
                            "pointerSize": 134,
                        },
                    }
                    for name, data in owner.hf.items()
                ]
                body = json.dumps(listing).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.startswith("/api/models/org/smol/tree/main"):
                    self.tree()
                    return
                if not self.path.endswith(".gguf"):
                    self.send_error(404)
                    return
                data = owner.data
                if self.path.startswith("/org/smol/resolve/main/"):
                    name = self.path.removeprefix("/org/smol/resolve/main/")
                    if name not in owner.hf:
                        self.send_error(404)
                        return
                    data = owner.hf[name]
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    owner.ranges.append(rng)
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if self.path.startswith("/slow/") and not rng:  # a slow link: about 4 MB/s
                    for i in range(0, len(body), 1 << 16):
                        try:
                            self.wfile.write(body[i : i + (1 << 16)])
                        except OSError:
                            return
                        time.sleep(0.016)
                    return
                if not rng and self.path not in owner.dropped:
                    owner.dropped.add(self.path)
                    cut = int(len(data) * owner.drop_at)
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the link drops mid-file
                    return
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return server


@pytest.fixture(scope="module")
def gguf(smollm2_path: Path) -> bytes:
    return smollm2_path.read_bytes()


@pytest.fixture(scope="module")
def files(gguf: bytes) -> Iterator[FileServer]:
    second_part = b"GGUF" + b"\0" * 1000  # a split's later parts start with the magic too
    fs = FileServer(
        gguf,
        hf={
            "smol-Q4_1.gguf": gguf,
            "smol-Q4_K_M.gguf": gguf,
            "big-Q8_0-00001-of-00002.gguf": gguf,
            "big-Q8_0-00002-of-00002.gguf": second_part,
            "README.md": b"# smol",
        },
        hf_sha={"smol-Q4_K_M.gguf": "1" * 64},  # the listing's digest disagrees with the bytes
    )
    server = fs.start()
    yield fs
    server.shutdown()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, gguf: bytes) -> Iterator[str]:
    """A real Distribution registry (Debian's docker-registry) holding `library/smol:135m` as
    Ollama publishes it: GGUF, template and params layers in a schema-2 manifest."""
    exe = shutil.which("docker-registry")
    require(exe, "docker-registry (Debian's Distribution registry) is not installed")
    assert exe is not None
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    (root / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n"
    )
    proc = subprocess.Popen(
        [exe, "serve", str(root / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if c.get("/v2/").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "docker-registry did not start"
                time.sleep(0.1)

            def push(data: bytes, media_type: str) -> dict[str, Any]:
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                up = c.post("/v2/library/smol/blobs/uploads/")
                assert up.status_code == 202, up.text
                location = httpx.URL(up.headers["Location"]).copy_merge_params({"digest": digest})
                put = c.put(location, content=data)
                assert put.status_code == 201, put.text
                return {"mediaType": media_type, "digest": digest, "size": len(data)}

            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": push(b"{}", "application/vnd.docker.container.image.v1+json"),
                "layers": [
                    push(gguf, "application/vnd.ollama.image.model"),
                    push(b"{{ .Prompt }}", "application/vnd.ollama.image.template"),
                    push(b'{"num_ctx": 1024}', "application/vnd.ollama.image.params"),
                ],
            }
            r = c.put(
                "/v2/library/smol/manifests/135m",
                content=json.dumps(manifest),
                headers={"Content-Type": manifest["mediaType"]},
            )
            assert r.status_code == 201, r.text
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def ollama_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    """An Ollama models folder holding SmolLM2 as `smol:135m` (GGUF, template and params)."""
    root = tmp_path_factory.mktemp("ollama") / "models"
    blobs = root / "blobs"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest.replace(":", "-")).write_bytes(data)
        return digest

    model = "sha256:" + hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
    try:
        os.link(smollm2_path, blobs / model.replace(":", "-"))
    except OSError:  # another file system
        shutil.copy(smollm2_path, blobs / model.replace(":", "-"))
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", "digest": model, "size": 1},
        {"mediaType": "application/vnd.ollama.image.template", "digest": blob(b"{{ .Prompt }}")},
        {"mediaType": "application/vnd.ollama.image.params", "digest": blob(b'{"num_ctx": 512}')},
    ]
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "smol" / "135m"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return root


@pytest.fixture(scope="module")
def other_tools(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    """A home with LM Studio's models folder and a Hugging Face hub cache, each holding SmolLM2
    the way the tool lays it out (the cache's snapshot file a symlink to its blob)."""
    home = tmp_path_factory.mktemp("home")
    lm = home / ".lmstudio" / "models" / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF"
    lm.mkdir(parents=True)
    repo = home / "hf-cache" / "models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for target in (lm / "SmolLM2-135M-Instruct-Q4_1.gguf", repo / "blobs" / "5f3e"):
        try:
            os.link(smollm2_path, target)
        except OSError:
            shutil.copy(smollm2_path, target)
    (snapshot / "smollm2-135m-instruct-q4_1.gguf").symlink_to("../../blobs/5f3e")
    return home


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory,
    ollama_dir: Path,
    files: FileServer,
    other_tools: Path,
) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("hub")
    env = {
        "OLLAMA_MODELS": str(ollama_dir),
        "HF_ENDPOINT": files.url,
        "HOME": str(other_tools),
        "HF_HUB_CACHE": str(other_tools / "hf-cache"),
    }
    with running_daemon(root, env=env) as d:
        yield d


def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "models", *args, "--url", d.url],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def wait_pull(c: httpx.Client, pull_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        p = c.get(f"/api/models/pulls/{pull_id}").json()
        if p["state"] in ("done", "failed", "cancelled"):
            return p  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, p
        time.sleep(0.05)


def pull_events(c: httpx.Client, pull_id: str) -> list[dict[str, Any]]:
    out = []
    with c.stream("GET", "/api/events", params={"since": 0, "types": "model.pull"}) as resp:
        for sse in EventSource(resp).iter_sse():
            ev = json.loads(sse.data)
            if ev.get("pull") == pull_id:
                out.append(ev)
                if ev["state"] in ("done", "failed", "cancelled"):
                    return out
    return out


def first_token_s(c: httpx.Client, model: str) -> float:
    t0 = time.monotonic()
    with c.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": model, "messages": CHAT, "max_tokens": 8, "stream": True},
    ) as resp:
        assert resp.status_code == 200, resp.read()
        for sse in EventSource(resp).iter_sse():
            if sse.data != "[DONE]" and json.loads(sse.data)["choices"][0]["delta"].get("content"):
                return time.monotonic() - t0
    raise AssertionError("no token came")


def test_a_pull_resumes_after_a_drop_verifies_and_serves(
    daemon: Daemon, files: FileServer, gguf: bytes
) -> None:
    digest = hashlib.sha256(gguf).hexdigest()
    t0 = time.monotonic()
    out = cli(daemon, "pull", f"url:{files.url}/smollm2.gguf", "--id", "smol", "--sha256", digest)
    assert out.returncode == 0, out.stderr + out.stdout
    with daemon.http() as c:
        ttft = first_token_s(c, "smol")
        total = time.monotonic() - t0
        print(
            f"\npull of {len(gguf) / 2**20:.0f} MiB to first token: {total:.2f} s "
            f"(first token {ttft:.2f} s after the pull)"
        )
        assert files.ranges, "the dropped download was not resumed with Range"
        assert (daemon.state_dir / "models" / "smol.gguf").read_bytes() == gguf
        assert not list((daemon.state_dir / "models").glob("*.partial"))
        model = daemon.model("smol")
        assert model["kind"] == "chat" and model["context_size"] == 8192
        assert (model["size_bytes"], model["origin"], model["sha256"]) == (len(gguf), "url", digest)
        pull = next(p for p in c.get("/api/models/pulls").json() if p["model"] == "smol")
        events = pull_events(c, pull["id"])
        assert events[-1]["state"] == "done" and events[-1]["bytes"] == len(gguf)
        assert events[-1]["total"] == len(gguf) and events[-1]["rate"] > 0
    assert (daemon.root / "models" / "smol.toml").is_file()


def test_a_wrong_sha256_leaves_no_file_and_no_profile(daemon: Daemon, files: FileServer) -> None:
    with daemon.http() as c:
        r = c.post(
            "/api/models/pull",
            json={"source": f"url:{files.url}/bad.gguf", "id": "bad", "sha256": "0" * 64},
        )
        assert r.status_code == 202, r.text
        p = wait_pull(c, r.json()["id"])
        assert p["state"] == "failed" and "sha256" in p["error"], p
        assert c.get("/api/models/bad").status_code == 404
    assert not list((daemon.state_dir / "models").glob("bad*"))
    assert not (daemon.root / "models" / "bad.toml").exists()


def test_a_file_larger_than_the_disk_is_refused_with_507(daemon: Daemon, files: FileServer) -> None:
    with daemon.http() as c:
        r = c.post("/api/models/pull", json={"source": f"url:{files.url}/huge.gguf"})
    assert r.status_code == 507, r.text
    assert "free" in r.json()["error"]["message"]
    assert not list((daemon.state_dir / "models").glob("huge*"))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"source": "ftp://host/x.gguf"}, "source"),
        ({"source": "/etc/passwd"}, "source"),
        ({"source": "hf:org/repo/../../etc/x.gguf"}, "source"),
        ({"source": "hf:org/repo"}, "source"),
        ({"source": "url:http://127.0.0.1:1/x.gguf", "id": "../evil"}, "id"),
        ({"source": "url:http://127.0.0.1:1/x.gguf", "sha256": "xyz"}, "sha256"),
    ],
)
def test_hostile_pulls_are_400_saying_what_to_do(
    daemon: Daemon, body: dict[str, str], param: str
) -> None:
    with daemon.http() as c:
        r = c.post("/api/models/pull", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and len(err["message"]) > 30, err


def test_import_from_ollama_serves_in_place_and_finds_nothing_new_twice(
    daemon: Daemon, ollama_dir: Path
) -> None:
    out = cli(daemon, "import", "--from", "ollama")
    assert out.returncode == 0, out.stderr
    assert "imported ollama-smol-135m (chat)" in out.stdout, out.stdout
    m = daemon.model("ollama-smol-135m")
    assert m["context_size"] == 512  # the params layer's num_ctx
    assert m["origin"] == "ollama" and m["sha256"] in m["source"]
    assert m["source"].startswith(str(ollama_dir / "blobs"))
    with daemon.http() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "ollama-smol-135m", "messages": CHAT, "max_tokens": 4},
        )
        assert r.status_code == 200, r.text
        again = c.post("/api/models/import", json={"from": "ollama"}).json()
        assert again["imported"] == []
        assert again["skipped"][0]["reason"] == "already imported"
        # a folder a client names in the shared /tmp is refused: anyone can plant files there
        r = c.post("/api/models/import", json={"from": "ollama", "path": str(ollama_dir)})
        assert r.status_code == 400 and r.json()["error"]["param"] == "path", r.text


@pytest.mark.parametrize(
    ("origin", "model"),
    [
        ("lmstudio", "lmstudio-smollm2-135m-instruct-q4_1"),
        ("hf-cache", "hf-smollm2-135m-instruct-q4_1"),
    ],
)
def test_import_from_lm_studio_and_the_hf_cache_then_chat(
    daemon: Daemon, origin: str, model: str
) -> None:
    with daemon.http() as c:
        out = c.post("/api/models/import", json={"from": origin}).json()
        assert [m["id"] for m in out["imported"]] == [model], out
        assert daemon.model(model)["origin"] == origin
        r = c.post("/v1/chat/completions", json={"model": model, "messages": CHAT, "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert c.post(f"/api/models/{model}/unload").status_code == 200
        assert c.post("/api/models/import", json={"from": origin}).json()["imported"] == []


def test_rm_with_files_removes_profile_and_file(
    daemon: Daemon, files: FileServer, gguf: bytes
) -> None:
    with daemon.http() as c:
        r = c.post("/api/models/pull", json={"source": f"url:{files.url}/gone.gguf"})
        assert r.status_code == 202, r.text
        assert wait_pull(c, r.json()["id"])["state"] == "done"
        assert c.post("/api/models/gone/load").status_code == 200
    path = daemon.state_dir / "models" / "gone.gguf"
    assert path.is_file()
    out = cli(daemon, "rm", "gone", "--files")
    assert out.returncode == 0, out.stderr
    assert not path.exists() and not (daemon.root / "models" / "gone.toml").exists()
    with daemon.http() as c:
        assert c.get("/api/models/gone").status_code == 404
        # an imported model's file belongs to Ollama: rm --files keeps it
        r = c.delete("/api/models/ollama-smol-135m", params={"files": "true"})
        assert r.status_code == 200 and r.json()["files_kept"], r.text


def test_hf_pulls_pick_the_quant_verify_the_lfs_sha256_and_take_every_split_part(
    daemon: Daemon, gguf: bytes
) -> None:
    with daemon.http() as c:
        r = c.post("/api/models/pull", json={"source": "hf:org/smol:q4_1"})
        assert r.status_code == 202, r.text
        p = wait_pull(c, r.json()["id"])
        assert p["state"] == "done" and p["model"] == "smol-q4_1", p
        assert daemon.model("smol-q4_1")["source"] == "hf:org/smol/smol-Q4_1.gguf"
        r = c.post(
            "/v1/chat/completions",
            json={"model": "smol-q4_1", "messages": CHAT, "max_tokens": 2},
        )
        assert r.status_code == 200, r.text

        r = c.post("/api/models/pull", json={"source": "hf:org/smol:Q4_K_M", "id": "liar"})
        p = wait_pull(c, r.json()["id"])
        assert p["state"] == "failed" and "sha256" in p["error"], p
        assert c.get("/api/models/liar").status_code == 404

        r = c.post("/api/models/pull", json={"source": "hf:org/smol:Q2_K"})
        assert r.status_code == 400 and "smol-Q4_1.gguf" in r.json()["error"]["message"]

        r = c.post("/api/models/pull", json={"source": "hf:org/smol:Q8_0", "id": "big"})
        p = wait_pull(c, r.json()["id"])
        assert p["state"] == "done" and p["bytes"] == len(gguf) + 1004, p
    store = daemon.state_dir / "models"
    assert (store / "big-00001-of-00002.gguf").read_bytes() == gguf
    assert (store / "big-00002-of-00002.gguf").stat().st_size == 1004
    assert not list(store.glob("liar*"))


def test_an_ollama_pull_from_a_registry_verifies_the_blob_and_takes_num_ctx(
    daemon: Daemon, registry: str, gguf: bytes
) -> None:
    host = registry.removeprefix("http://")
    with daemon.http() as c:
        r = c.post("/api/models/pull", json={"source": f"ollama:{host}/library/smol:135m"})
        assert r.status_code == 202, r.text
        p = wait_pull(c, r.json()["id"])
        assert p["state"] == "done" and p["model"] == "smol-135m", p
        m = daemon.model("smol-135m")
        assert m["context_size"] == 1024 and m["source"].startswith(f"url:{registry}/v2/")
        r = c.post(
            "/v1/chat/completions",
            json={"model": "smol-135m", "messages": CHAT, "max_tokens": 2},
        )
        assert r.status_code == 200, r.text
        r = c.post("/api/models/pull", json={"source": f"ollama:{host}/library/smol:nope"})
        assert r.status_code == 503 and "no model smol:nope" in r.json()["error"]["message"]
    assert (daemon.state_dir / "models" / "smol-135m.gguf").read_bytes() == gguf


def test_ollama_clients_pull_run_and_delete_through_the_ollama_api(
    daemon: Daemon, registry: str
) -> None:
    import ollama

    client = ollama.Client(host=daemon.url)
    name = f"{registry.removeprefix('http://')}/library/smol:135m"
    lines = list(client.pull(name, insecure=True, stream=True))
    assert lines[0].status == "pulling manifest" and lines[-1].status == "success"
    assert any(ln.completed for ln in lines if ln.status and ln.status.startswith("pulling "))
    reply = client.chat(name, messages=CHAT, options={"num_predict": 2})
    assert reply.message.role == "assistant"
    assert client.pull(name, insecure=True).status == "success"  # already there
    client.delete(name)
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(name, messages=CHAT)
    assert exc.value.status_code == 404


def test_a_load_does_not_wait_for_two_pulls_and_a_pull_can_be_cancelled(
    daemon: Daemon, files: FileServer
) -> None:
    with daemon.http() as c:
        if c.get("/api/models/smol").status_code == 404:
            r = c.post(
                "/api/models/pull", json={"source": f"url:{files.url}/smol.gguf", "id": "smol"}
            )
            assert wait_pull(c, r.json()["id"])["state"] == "done"
        assert c.post("/api/models/smol/unload").status_code == 200
        ids = []
        for name in ("slow-a", "slow-b"):
            r = c.post("/api/models/pull", json={"source": f"url:{files.url}/slow/{name}.gguf"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        deadline = time.monotonic() + 30
        while not all(c.get(f"/api/models/pulls/{i}").json()["bytes"] > 0 for i in ids):
            assert time.monotonic() < deadline, "the slow pulls did not start"
            time.sleep(0.05)
        t0 = time.monotonic()
        assert c.post("/api/models/smol/load").status_code == 200
        load_s = time.monotonic() - t0
        pulls = {p["id"]: p for p in c.get("/api/models/pulls").json()}
        assert all(pulls[i]["state"] == "downloading" for i in ids), (load_s, pulls)
        assert all(0 < pulls[i]["bytes"] < pulls[i]["total"] for i in ids), pulls
        for i in ids:
            r = c.delete(f"/api/models/pulls/{i}")
            assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    store = daemon.state_dir / "models"
    assert not list(store.glob("slow-*")), "a cancelled pull leaves nothing behind"


def test_a_pull_cut_by_a_daemon_restart_resumes_from_its_partial_file(
    tmp_path: Path, files: FileServer, gguf: bytes
) -> None:
    source = {"source": f"url:{files.url}/slow/restart.gguf", "id": "restarted"}
    partial = tmp_path / "state" / "models" / "restarted.gguf.partial"
    with running_daemon(tmp_path) as d, d.http() as c:
        r = c.post("/api/models/pull", json=source)
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 30
        while c.get(f"/api/models/pulls/{r.json()['id']}").json()["bytes"] < 8 << 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    # the daemon stopped mid-pull: what arrived stays, under a name no catalog reads as a model
    have = partial.stat().st_size
    assert 0 < have < len(gguf)
    with running_daemon(tmp_path) as d, d.http() as c:
        r = c.post("/api/models/pull", json=source)
        assert wait_pull(c, r.json()["id"])["state"] == "done"
        assert any(int(rng.split("=")[1].split("-")[0]) >= have for rng in files.ranges)
        assert (d.state_dir / "models" / "restarted.gguf").read_bytes() == gguf
        assert not partial.exists()
