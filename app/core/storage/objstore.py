"""An S3-compatible object store: where checkpoints and results live when workers run on
hosts that share no disk (``DDPM_OBJECT_STORE=s3://bucket/prefix``).

boto3 is an optional extra (``pip install 'ddpm-service[s3]'``), imported only when an
object store is configured. Credentials come the standard AWS way (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, a profile, an instance role); ``DDPM_S3_ENDPOINT_URL`` points
at a store other than AWS (MinIO, Ceph, R2, ...)."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "OBJECT_STORE_RE",
    "ObjectStoreError",
    "ObjectInfo",
    "ObjectStore",
    "get_object_store",
    "sha256_file",
]

# s3://bucket or s3://bucket/some/prefix (bucket names as S3 allows them).
OBJECT_STORE_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/[A-Za-z0-9._/-]*)?$")


class ObjectStoreError(OSError):
    """The object store could not be reached or refused a request (an OSError: callers
    that handle a failing disk handle a failing store the same way)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ObjectStore:
    """Bytes and files by key under ``s3://bucket/prefix``; every key given to a method is
    relative to the prefix. Thread-safe (one boto3 client, which is)."""

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        m = OBJECT_STORE_RE.fullmatch(url)
        if not m:
            raise ValueError(f"object store must look like s3://bucket/prefix, got {url!r}")
        self.url = url
        self.bucket = m.group(1)
        prefix = (m.group(2) or "").strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ObjectStoreError(
                "DDPM_OBJECT_STORE needs boto3: pip install 'ddpm-service[s3]'"
            ) from None
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            # SigV4 for presigned URLs too (boto3 would sign those the legacy way).
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kw)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise ObjectStoreError(f"object store: {what} refused ({code})") from None
        except BotoCoreError as exc:
            raise ObjectStoreError(f"object store unreachable: {what} ({exc})") from None

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self._call(
            f"put {key}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            **extra,
        )

    def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        try:
            return self._call(f"get {key}", self._raw_get, Bucket=self.bucket, Key=self._key(key))
        except _Missing:
            return None

    def _raw_get(self, **kw: Any) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(**kw)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise _Missing from None
            raise

    def presigned_get(self, key: str, seconds: int) -> str:
        """A URL that GETs ``key`` without credentials for ``seconds`` (signed locally: no
        request is made, and a key that does not exist answers 404 there)."""
        return self._call(
            f"presign {key}",
            self.client.generate_presigned_url,
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=seconds,
        )

    def upload_file(self, path: Path, key: str) -> None:
        self._call(f"upload {key}", self.client.upload_file, str(path), self.bucket, self._key(key))

    def download_file(self, key: str, path: Path) -> None:
        self._call(
            f"download {key}", self.client.download_file, self.bucket, self._key(key), str(path)
        )

    def list(self, prefix: str, delimiter: str | None = None) -> tuple[list[ObjectInfo], list[str]]:
        """Objects under ``prefix`` and, with a ``delimiter``, the sub-prefixes (both relative
        to the store's prefix)."""
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        if delimiter:
            kw["Delimiter"] = delimiter
        objects, prefixes = [], []
        cut = len(self.prefix)

        def pages() -> list[dict]:
            return list(self.client.get_paginator("list_objects_v2").paginate(**kw))

        for page in self._call(f"list {prefix}", pages):
            for o in page.get("Contents", []):
                objects.append(ObjectInfo(o["Key"][cut:], o.get("ETag", ""), int(o.get("Size", 0))))
            prefixes += [p["Prefix"][cut:] for p in page.get("CommonPrefixes", [])]
        return objects, prefixes

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; how many there were."""
        objects, _ = self.list(prefix)
        for i in range(0, len(objects), 1000):
            batch = [{"Key": self._key(o.key)} for o in objects[i : i + 1000]]
            self._call(
                f"delete {prefix}",
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
        return len(objects)

    def delete(self, key: str) -> None:
        self._call(
            f"delete {key}", self.client.delete_object, Bucket=self.bucket, Key=self._key(key)
        )


class _Missing(Exception):
    pass


@functools.lru_cache(maxsize=8)
def get_object_store(url: str, endpoint_url: str | None = None) -> ObjectStore:
    """One store (one client, one connection pool) per process and configuration."""
    return ObjectStore(url, endpoint_url)
