"""The model catalog: every model the appliance knows, from profiles and scanned directories.

Profiles are read in order, later ones replacing earlier ones with the same id: the shipped
profiles/models/, then `models.profile_dirs` from the config, then the config directory's models/
(where `appliance models add` writes). Directories in `models.scan_dirs` add one chat model per
`.gguf` file found, named after the file. The catalog also resolves a profile to a local file,
fetching it into the model store when its source is remote.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec

from appliance.config import Config, load_toml_struct, shipped_profiles_dir
from appliance.errors import ConfigError, Conflict, InvalidRequest, ModelNotFound, ModelUnavailable
from appliance.models.fetch.fetcher import ModelFetcher
from appliance.models.profile import ModelProfile
from appliance.models.registration import RegistrationPolicy, check_replace
from appliance.private import write_private

log = logging.getLogger("appliance.models")

Progress = Callable[[str, float | None, str], None]


def _id_from_filename(path: Path) -> str:
    stem = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-._")
    return (stem or "model")[:64]


class ModelCatalog:
    def __init__(
        self, profiles: dict[str, ModelProfile], fetcher: ModelFetcher, user_dir: Path
    ) -> None:
        self._profiles = dict(profiles)
        self.fetcher = fetcher
        self.user_dir = user_dir
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.files: dict[str, Path] = {}
        """The TOML file each profile was read from (scanned models have none)."""

    @classmethod
    def load(cls, config: Config) -> ModelCatalog:
        dirs = [shipped_profiles_dir() / "models"]
        dirs += [Path(d).expanduser() for d in config.models.profile_dirs]
        user_dir = Path(config.config_dir) / "models"
        dirs.append(user_dir)
        profiles: dict[str, ModelProfile] = {}
        files: dict[str, Path] = {}
        for d in dirs:
            if not d.is_dir():
                continue
            for f in sorted(d.glob("*.toml")):
                prof = load_toml_struct(f, ModelProfile, extra={"id": f.stem})
                profiles[prof.id] = prof
                files[prof.id] = f
        for scan in config.models.scan_dirs:
            root = Path(scan).expanduser()
            if not root.is_dir():
                log.warning("models.scan_dirs: %s is not a directory; skipped", root)
                continue
            for f in sorted(root.rglob("*.gguf")):
                mid = _id_from_filename(f)
                profiles.setdefault(
                    mid, ModelProfile(id=mid, source=str(f), description=f"found in {root}")
                )
        fetcher = ModelFetcher(Path(config.state_dir) / "models")
        catalog = cls(profiles, fetcher, user_dir)
        catalog.files = files
        return catalog

    # --- lookup ----------------------------------------------------------------------------

    def ids(self) -> list[str]:
        return sorted(self._profiles)

    def get(self, model_id: str) -> ModelProfile:
        prof = self._profiles.get(model_id)
        if prof is None:
            known = ", ".join(self.ids()) or "none"
            raise ModelNotFound(
                f"model {model_id!r} does not exist. Known models: {known}. "
                "Add one with `appliance models add PATH`.",
                param="model",
            )
        return prof

    def all(self) -> list[ModelProfile]:
        return [self._profiles[i] for i in self.ids()]

    def local_path(self, model_id: str) -> Path | None:
        prof = self.get(model_id)
        return self.fetcher.local_path(prof.id, prof.source, prof.convert)

    def ensure_local(self, model_id: str, progress: Progress | None = None) -> Path:
        """The model's GGUF on disk, fetched (and converted) first if needed. Blocking."""
        prof = self.get(model_id)
        with self._lock:
            lock = self._fetch_locks.setdefault(model_id, threading.Lock())
        with lock:
            path = self.fetcher.local_path(prof.id, prof.source, prof.convert)
            if path is not None:
                return path
            try:
                return self.fetcher.ensure(prof.id, prof.source, prof.convert, progress=progress)
            except (ModelUnavailable, ConfigError, InvalidRequest):
                raise
            except Exception as exc:
                raise ModelUnavailable(
                    f"fetching model {model_id!r} from {prof.source} failed: {exc}"
                ) from exc

    # --- changes ---------------------------------------------------------------------------

    def add(self, profile: ModelProfile) -> Path:
        """Register a profile and write it to the config directory so it survives restarts."""
        self.user_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.user_dir / f"{profile.id}.toml"
        data = {k: v for k, v in msgspec.to_builtins(profile).items() if v is not None}
        write_private(target, msgspec.toml.encode(data))
        with self._lock:
            self._profiles[profile.id] = profile
            self.files[profile.id] = target
        return target

    def remove(self, model_id: str) -> None:
        """Forget a profile and delete its TOML, which must be one the appliance wrote (the
        config directory's models/); a profile from elsewhere is refused with where it lives."""
        self.get(model_id)
        where = self.files.get(model_id)
        if where is None or where.parent.resolve() != self.user_dir.resolve():
            origin = f"the profile file {where}" if where else "a models.scan_dirs directory"
            raise Conflict(
                f"model {model_id!r} comes from {origin}, which the appliance does not write;"
                " remove it there and restart the daemon",
                param="id",
                code="model_not_removable",
            )
        where.unlink(missing_ok=True)
        with self._lock:
            self._profiles.pop(model_id, None)
            self.files.pop(model_id, None)

    def add_path(
        self,
        path: Path,
        *,
        model_id: str | None = None,
        kind: str = "chat",
        replace: bool = False,
        policy: RegistrationPolicy | None = None,
    ) -> ModelProfile:
        """Register a GGUF file under `model_id` (default: from the file name).

        An existing id is replaced only with `replace`. With a `policy` (the API's) the file must
        lie in a model directory; the CLI, run by the box's owner, passes none. Nothing is written
        when the request is refused."""
        if policy is not None:
            path = policy.check_path(path)
        else:
            path = path.expanduser().resolve()
            if not path.is_file() or path.suffix != ".gguf":
                raise InvalidRequest(
                    f"{path} is not a .gguf file; give the path of a GGUF model file"
                )
        mid = model_id or _id_from_filename(path)
        try:
            prof = ModelProfile(id=mid, source=str(path), kind=kind)  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(str(exc), param="id") from exc
        existing = self._profiles.get(mid)
        check_replace(mid, existing.source if existing is not None else None, replace)
        self.add(prof)
        return prof
