"""Which model files a client may register through the API, and under which ids.

`POST /api/models` writes a profile to the config directory, so what it accepts survives restarts
and is loaded by a model worker. Issue 9 chained it into an attack: code in a sandbox wrote a
GGUF into its workspace, read the workspace's host path from /proc/self/mountinfo, and re-pointed
the id `smollm2-135m-instruct` at it. The rules that close that chain:

- A file must lie, after every symlink is resolved, in a model directory: the state directory's
  `models/`, `models.scan_dirs`, `models.profile_dirs` or the config directory's `models/`. Those
  are also what a jailed worker can read (appliance.host.worker_jail).
- Never in a sandbox workspace (`<state>/sandboxes/`) nor a temporary directory (/tmp, /var/tmp,
  /dev/shm, $TMPDIR), where other users and sandboxed programs can place files; a configured model
  directory that is, or contains, one of them does not count as a model directory. (A model
  directory configured inside a temporary directory, such as a test's state directory under
  /tmp, is still one: the rule is about the shared directory itself.)
- An existing id is never replaced unless the request says `replace: true`. Whenever API tokens
  exist every request already carries a valid one (appliance.api.auth), so a replacement then
  comes from a token holder.

Every refusal happens before anything is written, and says what to do instead.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config
from appliance.errors import Conflict, InvalidRequest

SHARED_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def model_directories(config: Config) -> list[Path]:
    """Every directory whose model files the appliance may load (as configured, unresolved)."""
    dirs = [Path(config.state_dir) / "models"]
    dirs += [Path(d).expanduser() for d in (*config.models.scan_dirs, *config.models.profile_dirs)]
    if config.config_dir:
        dirs.append(Path(config.config_dir) / "models")
    return dirs


@dataclass(frozen=True)
class RegistrationPolicy:
    model_dirs: tuple[Path, ...]
    """Resolved model directories; none of them is, or holds, a workspace or temporary directory."""
    workspaces: Path
    """Resolved `<state>/sandboxes`: never a source of models."""
    temp_dirs: tuple[Path, ...]
    """Resolved shared temporary directories: files there come from anyone."""

    @classmethod
    def for_config(cls, config: Config) -> RegistrationPolicy:
        workspaces = _real(Path(config.state_dir) / "sandboxes")
        temps = tuple(
            dict.fromkeys(
                _real(d) for d in (*SHARED_TEMP_DIRS, tempfile.gettempdir()) if os.path.isdir(d)
            )
        )
        dirs = dict.fromkeys(_real(d) for d in model_directories(config))
        # a "model directory" at or above a refused one would let everything in it through
        allowed = tuple(d for d in dirs if not any(_inside(r, d) for r in (workspaces, *temps)))
        return cls(model_dirs=allowed, workspaces=workspaces, temp_dirs=temps)

    def check_path(self, path: Path) -> Path:
        """The resolved path of a model file a client may register; InvalidRequest otherwise."""
        real = _real(path)
        where = ", ".join(str(d) for d in self.model_dirs) or "none configured"
        move = f"Move the file into a model directory ({where}) and register that path"
        if _inside(real, self.workspaces):
            raise InvalidRequest(
                f"{path} resolves to {real}, inside a sandbox workspace: models are never loaded "
                f"from there. {move}",
                param="path",
                code="model_path_not_allowed",
            )
        if not any(_inside(real, d) for d in self.model_dirs):
            temp = next((t for t in self.temp_dirs if _inside(real, t)), None)
            why = (
                f"in the temporary directory {temp}, where anyone can place files"
                if temp
                else "outside the model directories"
            )
            raise InvalidRequest(
                f"{path} resolves to {real}, {why}. {move}, or add its directory to "
                "models.scan_dirs in the config",
                param="path",
                code="model_path_not_allowed",
            )
        if not real.is_file() or real.suffix != ".gguf":
            raise InvalidRequest(
                f"{path} is not a .gguf file; give the path of a GGUF model file", param="path"
            )
        return real

    def check_import(self, path: Path, *, trusted: bool) -> Path:
        """A folder (or a file found in it) to import from; InvalidRequest when it resolves into,
        or holds, a sandbox workspace, or, unless `trusted` (the daemon's own default folders),
        into a shared temporary directory outside the model directories."""
        real = _real(path)
        if _inside(real, self.workspaces) or _inside(self.workspaces, real):
            raise InvalidRequest(
                f"{path} resolves to {real}, which is or holds a sandbox workspace: models are"
                " never imported from there",
                param="path",
                code="model_path_not_allowed",
            )
        if trusted or any(_inside(real, d) for d in self.model_dirs):
            return real
        temp = next((t for t in self.temp_dirs if _inside(real, t)), None)
        if temp is not None:
            raise InvalidRequest(
                f"{path} resolves to {real}, in the temporary directory {temp}, where anyone can"
                " place files. Move the models elsewhere (or into a model directory) and import"
                " from there",
                param="path",
                code="model_path_not_allowed",
            )
        return real


def check_replace(model_id: str, existing_source: str | None, replace: bool) -> None:
    """Conflict (409) when `model_id` exists and the request did not ask to replace it."""
    if existing_source is not None and not replace:
        raise Conflict(
            f'model {model_id!r} already exists (source {existing_source}); send "replace": true to re-point '
            "it at the new file, or choose another id",
            param="id",
            code="model_exists",
        )
