"""Where finished images live: on disk under DATA_DIR/results/{job}/, in Redis, or in the
object store (``results/{job}/`` under ``DDPM_OBJECT_STORE``, for hosts without a shared
disk; expire them with a bucket lifecycle rule).

Each attempt of a job writes its own files (``a{attempt}/`` on disk, ``{attempt}:`` in
Redis) and the job document records which attempt's files are the result, so a stale
attempt that finishes late can never overwrite what was served."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import redis

from app.core.jobs.ids import is_job_id
from ddpm_core.config.formats import IMAGE_FORMATS, image_format

if TYPE_CHECKING:
    from app.core.storage.objstore import ObjectStore

__all__ = [
    "ResultStore",
    "DiskResults",
    "RedisResults",
    "ObjectResults",
    "make_result_store",
    "object_store_of",
    "RESULT_NAME_RE",
    "media_type",
]

# Images and the grid in every output format; preview.png: the latest live preview grid
# of a running job (app/core/jobs/previews.py).
_EXTENSIONS = "|".join(f.extension for f in IMAGE_FORMATS.values())
RESULT_NAME_RE = re.compile(
    rf"^(([0-9]{{1,5}}|grid)\.({_EXTENSIONS})|trajectory\.gif|preview\.png)$"
)


def _check(job_id: str, name: str) -> None:
    if not is_job_id(job_id) or not RESULT_NAME_RE.match(name):
        raise ValueError(f"bad result reference {job_id!r}/{name!r}")


class ResultStore(Protocol):
    """Bytes of a job's result files by name (``0.png``, ``grid.png``, ``trajectory.gif``)
    and attempt (None: the layout of results written before attempts were recorded)."""

    kind: str

    def put(self, job_id: str, name: str, data: bytes, attempt: int | None = None) -> None: ...

    def get(self, job_id: str, name: str, attempt: int | None = None) -> bytes | None: ...

    def delete(self, job_id: str) -> None: ...


def media_type(name: str) -> str:
    """The Content-Type of a result file, by its extension."""
    ext = name.rsplit(".", 1)[-1]
    return "image/gif" if ext == "gif" else image_format(ext).media_type


class DiskResults:
    """Files under ``root/{job}/``, each written atomically."""

    kind = "disk"

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir).resolve() / "results"

    def _path(self, job_id: str, name: str, attempt: int | None) -> Path:
        _check(job_id, name)
        # One folder per job; the attempt prefixes the name (a folder per attempt would
        # cost another disk block for every job).
        return self.root / job_id / (name if attempt is None else f"a{int(attempt)}_{name}")

    def put(self, job_id: str, name: str, data: bytes, attempt: int | None = None) -> None:
        path = self._path(job_id, name, attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def get(self, job_id: str, name: str, attempt: int | None = None) -> bytes | None:
        try:
            return self._path(job_id, name, attempt).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, job_id: str) -> None:
        if is_job_id(job_id):
            shutil.rmtree(self.root / job_id, ignore_errors=True)


class RedisResults:
    """Bytes in Redis under ``{prefix}result:{job}:{name}``, with the job TTL."""

    kind = "redis"

    def __init__(self, client: redis.Redis, prefix: str = "ddpm:", ttl: int = 86400) -> None:
        self.r = client  # a client without decode_responses
        self.prefix = prefix
        self.ttl = ttl

    def _key(self, job_id: str, name: str, attempt: int | None) -> str:
        _check(job_id, name)
        middle = "" if attempt is None else f"{int(attempt)}:"
        return f"{self.prefix}result:{job_id}:{middle}{name}"

    def put(self, job_id: str, name: str, data: bytes, attempt: int | None = None) -> None:
        self.r.set(self._key(job_id, name, attempt), data, ex=self.ttl)

    def get(self, job_id: str, name: str, attempt: int | None = None) -> bytes | None:
        return self.r.get(self._key(job_id, name, attempt))

    def delete(self, job_id: str) -> None:
        keys = list(self.r.scan_iter(match=f"{self.prefix}result:{job_id}:*"))
        if keys:
            self.r.delete(*keys)


class ObjectResults:
    """Objects ``results/{job}/{a{attempt}_}{name}`` in the object store."""

    kind = "s3"

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def _key(self, job_id: str, name: str, attempt: int | None) -> str:
        _check(job_id, name)
        return f"results/{job_id}/" + (name if attempt is None else f"a{int(attempt)}_{name}")

    def put(self, job_id: str, name: str, data: bytes, attempt: int | None = None) -> None:
        self.objects.put_bytes(self._key(job_id, name, attempt), data, media_type(name))

    def get(self, job_id: str, name: str, attempt: int | None = None) -> bytes | None:
        return self.objects.get_bytes(self._key(job_id, name, attempt))

    def presigned_url(self, job_id: str, name: str, attempt: int | None, seconds: int) -> str:
        """A short-lived URL of the file in the object store itself."""
        return self.objects.presigned_get(self._key(job_id, name, attempt), seconds)

    def delete(self, job_id: str) -> None:
        if is_job_id(job_id):
            self.objects.delete_prefix(f"results/{job_id}/")


def make_result_store(
    kind: str,
    data_dir: Path | str,
    client: redis.Redis,
    prefix: str,
    ttl: int,
    objects: ObjectStore | None = None,
) -> ResultStore:
    """The result store named ``kind`` (``disk``, ``redis``, or ``s3`` with ``objects``)."""
    if kind == "disk":
        return DiskResults(data_dir)
    if kind == "redis":
        return RedisResults(client, prefix, ttl)
    if kind == "s3":
        if objects is None:
            raise ValueError("result store s3 needs an object store (DDPM_OBJECT_STORE)")
        return ObjectResults(objects)
    raise ValueError(f"unknown result store {kind!r}")


def object_store_of(settings: object) -> ObjectStore | None:
    """The process's object store when the settings configure one."""
    url = getattr(settings, "object_store", None)
    if not url:
        return None
    from app.core.storage.objstore import get_object_store

    return get_object_store(url, getattr(settings, "s3_endpoint_url", None))
