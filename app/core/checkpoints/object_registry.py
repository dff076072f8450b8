"""The checkpoint registry in an S3-compatible object store, for workers that share no disk.

Why an object store: checkpoints are files of megabytes to gigabytes, written once and
read by many; an object store serves that from any host, scales, and needs no shared
file system. Redis (already shared by every process) holds the one thing that needs
atomicity, the version counter.

Layout under the store's prefix::

    checkpoints/{name}/{version}/{file}     the version's files, uploaded first
    checkpoints/{name}/{version}.json       its manifest: the commit point
    checkpoints/{name}/{version}.deleted    a tombstone, once deleted

A version exists when its manifest does. The manifest lists every file with its sha256
and size, and carries config.json and meta.json, so listing and resolving read JSON only
(one LIST per call; manifests are cached by ETag). Version numbers come from Redis
(``{prefix}registry:{name}:next``, INCR), never below what the store already holds: two
publishers never collide and a number is never reused, not even after a delete or a
lost Redis. A worker reads a version through :meth:`ObjectRegistry.materialize`: the
files are downloaded into ``DATA_DIR/cache/checkpoints/{name}@{version}-{hash}``, keyed
by the manifest's content hash, verified against it and renamed into place whole. A
version published anywhere is served by every worker at its next job, with no restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import redis

from app.core.checkpoints.registry import (
    BUILTIN,
    VERSION_RE,
    InvalidCheckpoint,
    NotFound,
    ReadOnly,
    Registry,
    RegistryError,
    ResolvedCheckpoint,
    _builtins,
    parse_ref,
    scrub_paths,
)
from app.core.storage.objstore import ObjectStore, sha256_file
from ddpm_core.config.checkpoint import CheckpointConfig

__all__ = ["ObjectRegistry", "MANIFEST_FORMAT", "allocate_version"]

MANIFEST_FORMAT = 1
_USED = ".used"  # its mtime: when a cached version was last asked for (LRU eviction)
_KEEP_RECENT_S = 60.0  # never evict a version asked for this recently (a load may follow)


# INCR, but never to a number at or below ``floor`` (the highest version the store holds):
# a counter lost with a Redis crash cannot hand out a used number again.
_ALLOCATE = """
local v = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if v <= floor then
  v = floor + 1
  redis.call('SET', KEYS[1], v)
end
return v
"""


def allocate_version(r: redis.Redis, key: str, floor: int) -> int:
    """The next version number from the shared counter ``key``: atomic across every host,
    never reused, above ``floor``."""
    return int(r.eval(_ALLOCATE, 1, key, int(floor)))


class ObjectRegistry(Registry):
    """:class:`Registry`'s interface over an :class:`ObjectStore`; built-ins stay local."""

    resolves_locally = False  # a version may have to be read from the object store

    def __init__(
        self,
        objects: ObjectStore,
        client: redis.Redis,
        key_prefix: str,
        cache_dir: Path | str,
        cache_size: int = 8,
    ) -> None:
        self.objects = objects
        self.r = client
        self.key_prefix = key_prefix
        self.cache = Path(cache_dir).resolve()
        self.cache_size = max(1, cache_size)
        self.root = self.cache  # Registry's attribute; nothing is published under it
        self._manifests: dict[str, tuple[str, dict[str, Any], str]] = {}
        self._lock = threading.Lock()

    # -- listing ------------------------------------------------------------------------
    def _listing(self, name: str) -> tuple[dict[str, str], int]:
        """{version: manifest ETag} of ``name``, and the highest version number the store
        has ever held for it (manifests, tombstones and files alike)."""
        objects, prefixes = self.objects.list(f"checkpoints/{name}/", delimiter="/")
        live: dict[str, str] = {}
        used = [0]
        for o in objects:
            stem, dot, ext = o.key.rpartition("/")[2].partition(".")
            if not VERSION_RE.fullmatch(stem) or stem == BUILTIN:
                continue
            used.append(int(stem))
            if dot and ext == "json":
                live[stem] = o.etag
        for p in prefixes:
            v = p.rstrip("/").rpartition("/")[2]
            if v.isdigit():
                used.append(int(v))
        return live, max(used)

    def _versions(self, name: str) -> list[str]:
        return sorted(self._listing(name)[0], key=int)

    def names(self) -> list[str]:
        _, prefixes = self.objects.list("checkpoints/", delimiter="/")
        stored = {p.rstrip("/").rpartition("/")[2] for p in prefixes}
        candidates = {n for n in stored if _valid_name(n)} | set(_builtins())
        return sorted(n for n in candidates if self.versions(n))

    def _manifest(self, name: str, version: str, etag: str | None = None) -> tuple[dict, str]:
        """(manifest, sha256 of its bytes); NotFound when the version has none."""
        key = f"checkpoints/{name}/{version}.json"
        cached = self._manifests.get(key)
        if cached is not None and etag is not None and cached[0] == etag:
            return cached[1], cached[2]
        data = self.objects.get_bytes(key)
        if data is None:
            raise NotFound(f"checkpoint {name!r} has no version {version!r}")
        try:
            manifest = json.loads(data)
        except ValueError:
            manifest = None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise InvalidCheckpoint(f"checkpoint {name}@{version} is invalid: bad manifest")
        digest = sha256(data).hexdigest()
        if etag is not None:
            self._manifests[key] = (etag, manifest, digest)
        return manifest, digest

    # -- reading ------------------------------------------------------------------------
    def resolve(self, ref: str, validate: bool = True) -> ResolvedCheckpoint:
        name, version = parse_ref(ref)
        if version == BUILTIN:
            return super().resolve(ref, validate)
        live, _ = self._listing(name)
        if version is None:
            if not live:
                return super().resolve(ref, validate)  # a built-in, or NotFound
            version = max(live, key=int)
        if version not in live:
            raise NotFound(f"checkpoint {name!r} has no version {version!r}")
        manifest, digest = self._manifest(name, version, live[version])
        config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
        spec = None
        if validate:
            try:
                spec = CheckpointConfig.from_dict(config)
            except (ValueError, TypeError) as exc:
                raise InvalidCheckpoint(
                    f"checkpoint {name}@{version} is invalid: config.json: {exc}"
                ) from None
        path = self.cache / f"{name}@{version}-{digest[:16]}"
        return ResolvedCheckpoint(name, version, path, False, config, spec)

    def describe(self, name: str) -> dict[str, Any]:
        """As :meth:`Registry.describe`, from one listing and the (cached) manifests."""
        parse_ref(name)
        live, _ = self._listing(name)
        out = []
        if name in _builtins():
            c = super().resolve(f"{name}@{BUILTIN}", validate=False)
            out.append(_version_info(BUILTIN, True, c.config, super().meta(c)))
        for v in sorted(live, key=int):
            try:
                manifest, _ = self._manifest(name, v, live[v])
            except RegistryError:  # listed even when invalid (generate refuses it)
                manifest = {}
            out.append(_version_info(v, False, manifest.get("config"), manifest.get("meta")))
        if not out:
            raise NotFound(f"unknown checkpoint {name!r}")
        return {"name": name, "latest": out[-1]["version"], "versions": out}

    def meta(self, ckpt: ResolvedCheckpoint) -> dict[str, Any]:
        if ckpt.builtin:
            return super().meta(ckpt)
        try:
            manifest, _ = self._manifest(ckpt.name, ckpt.version, self._etag(ckpt))
        except RegistryError:
            return {}
        meta = manifest.get("meta")
        return meta if isinstance(meta, dict) else {}

    def _etag(self, ckpt: ResolvedCheckpoint) -> str | None:
        return self._listing(ckpt.name)[0].get(ckpt.version)

    def read_file(self, ckpt: ResolvedCheckpoint, filename: str) -> bytes | None:
        if ckpt.builtin:
            return super().read_file(ckpt, filename)
        manifest, _ = self._manifest(ckpt.name, ckpt.version, self._etag(ckpt))
        entry = manifest["files"].get(filename)
        if "/" in filename or not isinstance(entry, dict):
            return None
        data = self.objects.get_bytes(f"checkpoints/{ckpt.name}/{ckpt.version}/{filename}")
        if data is None or sha256(data).hexdigest() != entry.get("sha256"):
            return None
        return data

    def published_by(self, name: str, job_id: str) -> ResolvedCheckpoint | None:
        live, _ = self._listing(name)
        for v in sorted(live, key=int, reverse=True):
            manifest, _ = self._manifest(name, v, live[v])
            if manifest.get("job_id") == job_id:
                return self.resolve(f"{name}@{v}")
        return None

    # -- the local cache ----------------------------------------------------------------
    def materialize(self, ckpt: ResolvedCheckpoint, full: bool = False) -> Path:
        """The version's files in a local directory (downloaded once, verified by sha256,
        renamed into place whole). Without ``full`` only the top-level files (config,
        weights, meta, samples); with it also the training state (to resume from)."""
        if ckpt.builtin:
            return ckpt.path
        dest = ckpt.path.with_name(ckpt.path.name + "-full") if full else ckpt.path
        with self._lock:
            if dest.is_dir():
                _touch(dest)
                return dest
            manifest, _ = self._manifest(ckpt.name, ckpt.version, self._etag(ckpt))
            self.cache.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache))
            try:
                for rel, entry in sorted(manifest["files"].items()):
                    if not _safe_relpath(rel) or (not full and "/" in rel):
                        continue
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self.objects.download_file(
                        f"checkpoints/{ckpt.name}/{ckpt.version}/{rel}", target
                    )
                    if sha256_file(target) != entry.get("sha256"):
                        raise InvalidCheckpoint(
                            f"checkpoint {ckpt.ref} is invalid: {rel} does not match the "
                            "sha256 in its manifest"
                        )
                (tmp / _USED).touch()
                os.chmod(tmp, 0o755)
                try:
                    os.rename(tmp, dest)
                except OSError:  # another process of this host was faster: use its copy
                    if not dest.is_dir():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._evict(keep=dest)
            return dest

    def _evict(self, keep: Path) -> None:
        """Keep the ``cache_size`` most recently used versions (never one used within the
        last minute: a job may be about to load it)."""
        entries = []
        for d in self.cache.iterdir():
            if d.name.startswith(".") or d == keep or not d.is_dir():
                continue
            try:
                entries.append((os.stat(d / _USED).st_mtime, d))
            except OSError:
                entries.append((0.0, d))
        entries.sort(reverse=True)
        now = time.time()
        for used, d in entries[self.cache_size - 1 :]:
            if now - used > _KEEP_RECENT_S:
                shutil.rmtree(d, ignore_errors=True)

    # -- writing ------------------------------------------------------------------------
    def publish(
        self, source: Path | str, name: str, move: bool = False, job_id: str | None = None
    ) -> ResolvedCheckpoint:
        """Upload checkpoint directory ``source`` as the next version of ``name``: the
        files, then the manifest (the commit point). A publish that dies before the
        manifest leaves files nobody sees, and its number is not reused. With ``job_id``,
        a job that already published gets that version back."""
        parse_ref(name)
        if job_id is not None and (done := self.published_by(name, job_id)) is not None:
            if move:
                shutil.rmtree(source, ignore_errors=True)
            return done
        source = Path(source)
        if not (source / "config.json").is_file():
            raise RegistryError(f"{source} is not a checkpoint directory (no config.json)")
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink())
        config = _read_json_file(source / "config.json")
        meta = _read_json_file(source / "meta.json")
        _, floor = self._listing(name)
        version = str(allocate_version(self.r, f"{self.key_prefix}registry:{name}:next", floor))
        entries = {}
        for f in files:
            rel = f.relative_to(source).as_posix()
            entries[rel] = {"sha256": sha256_file(f), "size": f.stat().st_size}
            self.objects.upload_file(f, f"checkpoints/{name}/{version}/{rel}")
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "version": version,
            "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "job_id": job_id,
            "files": entries,
            "config": config,
            "meta": meta,
        }
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        self.objects.put_bytes(f"checkpoints/{name}/{version}.json", body, "application/json")
        if move:
            shutil.rmtree(source, ignore_errors=True)
        return self.resolve(f"{name}@{version}")

    def delete(self, name: str, version: str) -> None:
        parse_ref(f"{name}@{version}")
        if version == BUILTIN:
            raise ReadOnly(f"{name}@{version} is built in and read-only")
        if version not in self._listing(name)[0]:
            raise NotFound(f"checkpoint {name}@{version} not found")
        self.objects.put_bytes(f"checkpoints/{name}/{version}.deleted", b"")
        self.objects.delete(f"checkpoints/{name}/{version}.json")  # gone from here on
        self.objects.delete_prefix(f"checkpoints/{name}/{version}/")


def _version_info(version: str, builtin: bool, config: Any, meta: Any) -> dict[str, Any]:
    return {
        "version": version,
        "builtin": builtin,
        "config": scrub_paths(config if isinstance(config, dict) else {}),
        "meta": scrub_paths(meta if isinstance(meta, dict) else {}),
    }


def _valid_name(name: str) -> bool:
    try:
        parse_ref(name)
    except RegistryError:
        return False
    return True


def _safe_relpath(rel: str) -> bool:
    """A manifest's file name that stays inside the version's directory."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _read_json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _touch(d: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(d / _USED)  # a file's time: the directory's (the engine's key) is unchanged
