"""The checkpoint registry: versions under DATA_DIR/checkpoints/{name}/{version}/.

Published versions are numbered 1, 2, ...; built-in checkpoints shipped in
``ddpm_core/builtin`` appear as version ``builtin`` and are read-only. Only
JSON is read here (config.json, meta.json), so the API process needs no torch;
configs are validated by the torch-free ``ddpm_core.config.checkpoint``. What
:meth:`Registry.describe` serves has every absolute server path cut to its
last component.

With ``DDPM_OBJECT_STORE`` set, :func:`app.core.checkpoints.make_registry` gives the same
interface over an S3-compatible store instead (:mod:`app.core.checkpoints.object_registry`),
for workers on hosts that share no disk; a version's files are then read through
:meth:`Registry.materialize`, which gives a local directory either way.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpm_core.config.checkpoint import CheckpointConfig, CheckpointError, read_config
from ddpm_core.config.paths import scrub_paths

__all__ = [
    "NAME_RE",
    "VERSION_RE",
    "RegistryError",
    "NotFound",
    "ReadOnly",
    "InvalidName",
    "InvalidCheckpoint",
    "ResolvedCheckpoint",
    "Registry",
    "parse_ref",
    "scrub_paths",
]

# Always used with fullmatch: "$" alone would also match before a trailing newline.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_RE = re.compile(r"^(builtin|[1-9][0-9]{0,8})$")
BUILTIN = "builtin"


class RegistryError(Exception):
    """Base of registry errors."""


class NotFound(RegistryError):
    """No such checkpoint or version."""


class ReadOnly(RegistryError):
    """The checkpoint version cannot be changed (a built-in)."""


class InvalidName(RegistryError):
    """A name or version that does not match the allowed patterns."""


class InvalidCheckpoint(RegistryError):
    """The checkpoint exists but its config.json is unreadable or invalid. The message
    names the checkpoint, the file and the field, never a server path."""


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A concrete checkpoint version with its config (parsed JSON, no torch)."""

    name: str
    version: str
    path: Path
    builtin: bool
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # The validated config (None only from resolve(..., validate=False)).
    spec: CheckpointConfig | None = field(default=None, compare=False, hash=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name`` or ``name@version`` -> (name, version or None); InvalidName when malformed."""
    name, _, version = ref.partition("@")
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidName(f"invalid checkpoint name {name!r} (must match {NAME_RE.pattern})")
    if _ and not VERSION_RE.fullmatch(version):
        raise InvalidName(f"invalid checkpoint version {version!r}")
    return name, (version or None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


@functools.cache  # the package's own files: fixed while the process runs
def _builtins() -> dict[str, Path]:
    try:
        from ddpm_core import builtin  # no torch in that package
    except ImportError:
        return {}
    names = getattr(builtin, "list_builtin", lambda: [])()
    out = {}
    for n in names:
        p = Path(builtin.builtin_path(n))
        if NAME_RE.fullmatch(n) and (p / "config.json").is_file():
            out[n] = p
    return out


@functools.lru_cache(maxsize=512)
def _parse_config(path: Path, stamp: tuple[int, int, int]) -> tuple[dict, CheckpointConfig | str]:
    """config.json of a version as (JSON, validated config or the public error message);
    cached by the file's (inode, size, mtime): published versions never change in place,
    and this runs on every request that names a checkpoint."""
    try:
        spec: CheckpointConfig | str = read_config(path)
    except CheckpointError as exc:
        spec = exc.public_message
    return _read_json(path / "config.json"), spec


def _config_of(path: Path) -> tuple[dict, CheckpointConfig | str]:
    try:
        st = (path / "config.json").stat()
    except OSError:
        return _parse_config.__wrapped__(path, (0, 0, 0))  # unreadable: nothing to cache
    return _parse_config(path, (st.st_ino, st.st_size, st.st_mtime_ns))


class Registry:
    """Checkpoints under ``root`` plus the read-only built-ins."""

    # A version resolves from the data directory with a stat or two (no network): the API
    # may resolve it on its event loop.
    resolves_locally = True

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir).resolve() / "checkpoints"

    def _versions(self, name: str) -> list[str]:
        d = self.root / name
        if not d.is_dir():
            return []
        vs = [
            p.name
            for p in d.iterdir()
            if p.is_dir() and VERSION_RE.fullmatch(p.name) and (p / "config.json").is_file()
        ]
        return sorted(vs, key=int)

    def _next_version(self, name: str) -> int:
        """One past every version ever published (deleted ones leave a tombstone), so a
        ``name@version`` never names two different checkpoints."""
        d = self.root / name
        used = [int(v) for v in self._versions(name)]
        used += [int(p.name[9:]) for p in d.glob(".deleted-*") if p.name[9:].isdigit()]
        return max(used, default=0) + 1

    def names(self) -> list[str]:
        local = (
            {p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name)}
            if self.root.is_dir()
            else set()
        )
        return sorted(n for n in local | set(_builtins()) if self.versions(n))

    def versions(self, name: str) -> list[str]:
        """All versions of ``name``, oldest first; ``builtin`` comes first when present."""
        vs = self._versions(name)
        return ([BUILTIN] if name in _builtins() else []) + vs

    def resolve(self, ref: str, validate: bool = True) -> ResolvedCheckpoint:
        """``name`` (latest version) or ``name@version`` -> the checkpoint; NotFound, and
        InvalidCheckpoint when its config.json is invalid (unless ``validate`` is False)."""
        name, version = parse_ref(ref)
        path = self.root / name / version if version and version != BUILTIN else None
        if path is None or not (path / "config.json").is_file():
            # A named version that exists needs no listing (a worker resolves one per job).
            versions = self.versions(name)
            if not versions:
                raise NotFound(f"unknown checkpoint {name!r}")
            version = version or versions[-1]
            if version not in versions:
                raise NotFound(f"checkpoint {name!r} has no version {version!r}")
            path = _builtins()[name] if version == BUILTIN else self.root / name / version
        config, parsed = _config_of(path)
        spec = parsed if isinstance(parsed, CheckpointConfig) else None
        if validate and spec is None:
            raise InvalidCheckpoint(f"checkpoint {name}@{version} is invalid: {parsed}")
        return ResolvedCheckpoint(name, version, path, version == BUILTIN, dict(config), spec)

    def describe(self, name: str) -> dict[str, Any]:
        """name, latest and every version with its config and meta (JSON only)."""
        parse_ref(name)
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"unknown checkpoint {name!r}")
        out = []
        for v in versions:
            # Listed even when invalid (generate refuses it with the reason).
            c = self.resolve(f"{name}@{v}", validate=False)
            out.append(
                {
                    "version": v,
                    "builtin": c.builtin,
                    "config": scrub_paths(c.config),
                    "meta": scrub_paths(self.meta(c)),
                }
            )
        return {"name": name, "latest": versions[-1], "versions": out}

    def meta(self, ckpt: ResolvedCheckpoint) -> dict[str, Any]:
        """The version's meta.json ({} when it has none or it is unreadable)."""
        return _read_json(ckpt.path / "meta.json")

    def materialize(self, ckpt: ResolvedCheckpoint, full: bool = False) -> Path:
        """A local directory holding the version's files (with ``full``, also its training
        state): here the version's own directory."""
        return ckpt.path

    def read_file(self, ckpt: ResolvedCheckpoint, filename: str) -> bytes | None:
        """One top-level file of the version (e.g. ``samples.png``), or None."""
        if "/" in filename or filename.startswith("."):
            return None
        try:
            return (ckpt.path / filename).read_bytes()
        except OSError:
            return None

    def published_by(self, name: str, job_id: str) -> ResolvedCheckpoint | None:
        """The version of ``name`` that job ``job_id`` published, if any (from meta.json)."""
        for v in reversed(self._versions(name)):
            if _read_json(self.root / name / v / "meta.json").get("job_id") == job_id:
                return self.resolve(f"{name}@{v}")
        return None

    def publish(
        self, source: Path | str, name: str, move: bool = False, job_id: str | None = None
    ) -> ResolvedCheckpoint:
        """Copy (or move) checkpoint directory ``source`` in as the next version of ``name``,
        atomically: a temporary directory in the same parent, then a rename. With
        ``job_id``, publishing is idempotent: a job that already published a version (an
        attempt whose outcome was lost, run again) gets that version back."""
        parse_ref(name)
        if job_id is not None and (done := self.published_by(name, job_id)) is not None:
            return done
        source = Path(source)
        if not (source / "config.json").is_file():
            raise RegistryError(f"{source} is not a checkpoint directory (no config.json)")
        parent = self.root / name
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=parent))
        try:
            staged = tmp / "ckpt"
            if move:
                shutil.move(str(source), staged)
            else:
                shutil.copytree(source, staged)
            for _ in range(1000):
                version = str(self._next_version(name))
                try:
                    os.rename(staged, parent / version)  # fails if another publish took it
                except OSError:
                    continue
                return self.resolve(f"{name}@{version}")
            raise RegistryError(f"could not allocate a version of {name!r}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def delete(self, name: str, version: str) -> None:
        """Remove one published version; built-ins are read-only."""
        parse_ref(f"{name}@{version}")
        if version == BUILTIN:
            raise ReadOnly(f"{name}@{version} is built in and read-only")
        path = self.root / name / version
        if not path.is_dir() or version not in self._versions(name):
            raise NotFound(f"checkpoint {name}@{version} not found")
        (self.root / name / f".deleted-{version}").touch()
        trash = Path(tempfile.mkdtemp(prefix=".delete-", dir=self.root / name))
        os.rename(path, trash / "ckpt")
        shutil.rmtree(trash, ignore_errors=True)
