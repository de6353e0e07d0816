"""One resumable, verified HTTP download into a `*.partial` file: what `url:` pulls are made of.

`download(url, partial, ...)` appends to `partial` with an HTTP `Range` request when the file
already holds bytes (from a dropped connection in this pull, or from an earlier pull that was
interrupted), so a link that drops at 40 % costs the last 60 % only. The sha256 is computed as the
bytes arrive (the bytes already in `partial` are hashed first), and a server that ignores Range
(it answers 200) restarts the file from zero rather than appending a second copy.

Progress goes to `report(bytes_done, total_or_None)`; `cancelled()` is polled between chunks and
stops the download with PullCancelled. The caller owns the partial file: it renames it into place
after verifying, or removes it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from appliance.errors import RequestCancelled
from appliance.models.fetch.wheels import ModelFetchError
from appliance.private import FILE_MODE

CHUNK = 1 << 20
ATTEMPTS = 5
"""Connections tried per download (the first and four resumes) before the pull fails."""

Report = Callable[[int, "int | None"], None]
Cancelled = Callable[[], bool]


class PullCancelled(RequestCancelled):
    """The pull was cancelled (DELETE /api/models/pulls/{id}, or the CLI's Ctrl-C)."""


class DownloadInterrupted(ModelFetchError):
    """The connection kept failing; the partial file holds what arrived, for a later resume."""


def remote_size(url: str, http: httpx.Client) -> int | None:
    """The size of `url` from a HEAD request, or None when the server does not say."""
    try:
        resp = http.head(url)
    except httpx.TransportError as exc:
        raise ModelFetchError(
            f"cannot reach {httpx.URL(url).host} ({exc}); check the URL and the network"
        ) from exc
    if resp.status_code in (404, 410):
        raise ModelFetchError(f"{url} answered HTTP {resp.status_code}; check the URL")
    if resp.status_code >= 400:
        return None  # some servers refuse HEAD; the GET will tell
    length = resp.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def _hash_existing(partial: Path) -> tuple[hashlib._Hash, int]:
    digest = hashlib.sha256()
    done = 0
    if partial.exists():
        with partial.open("rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
                done += len(block)
    return digest, done


def download(
    url: str,
    partial: Path,
    *,
    http: httpx.Client,
    report: Report,
    cancelled: Cancelled,
    attempts: int = ATTEMPTS,
) -> str:
    """Download `url` into `partial` (resuming what it holds); returns the file's sha256 (hex)."""
    digest, done = _hash_existing(partial)
    total: int | None = None
    last_error: Exception | None = None
    for attempt in range(attempts):
        if cancelled():
            raise PullCancelled("the pull was cancelled")
        if attempt:
            time.sleep(min(0.2 * attempt, 1.0))
        headers = {"Range": f"bytes={done}-"} if done else {}
        try:
            with http.stream("GET", url, headers=headers) as resp:
                if resp.status_code == 416 and done and total is not None and done >= total:
                    return digest.hexdigest()  # we already hold the whole file
                if resp.status_code >= 400:
                    raise ModelFetchError(f"{url} answered HTTP {resp.status_code}; check the URL")
                if resp.status_code != 206 and done:
                    digest, done = hashlib.sha256(), 0  # the server ignored Range: start over
                length = resp.headers.get("content-length")
                total = done + int(length) if length and length.isdigit() else total
                mode = "ab" if done else "wb"
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
                with os.fdopen(fd, mode) as f:
                    if not done:
                        f.truncate(0)
                    for chunk in resp.iter_bytes(CHUNK):
                        f.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        report(done, total)
                        if cancelled():
                            raise PullCancelled("the pull was cancelled")
            if total is None or done >= total:
                return digest.hexdigest()
            last_error = ModelFetchError(f"the server closed the connection at {done} of {total}")
        except httpx.TransportError as exc:
            last_error = exc  # a dropped connection: resume from what the partial file holds
    raise DownloadInterrupted(
        f"downloading {url} failed after {attempts} attempts ({last_error}); run the same pull"
        " again to resume from the bytes already downloaded"
    )


def file_sha256(path: Path) -> str:
    digest, _ = _hash_existing(path)
    return digest.hexdigest()
