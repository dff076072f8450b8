"""The checkpoint registry: published versions on the data disk
(:mod:`~app.core.checkpoints.registry`) or in an S3-compatible object store
(:mod:`~app.core.checkpoints.object_registry`); :func:`make_registry` picks one."""

from __future__ import annotations

from pathlib import Path

import redis

from app.core.checkpoints import registry
from app.core.checkpoints.registry import *  # noqa: F403 - the package's face
from app.core.checkpoints.registry import Registry
from app.core.settings import Settings
from app.core.store.connection import connect

__all__ = [*registry.__all__, "make_registry"]


def make_registry(settings: Settings, client: redis.Redis | None = None) -> Registry:
    """The registry the settings describe: the object store when ``object_store`` is set
    (version numbers from Redis ``client``), else the data directory."""
    if not settings.object_store:
        return Registry(settings.data_dir)
    from app.core.checkpoints.object_registry import ObjectRegistry
    from app.core.storage.objstore import get_object_store

    return ObjectRegistry(
        get_object_store(settings.object_store, settings.s3_endpoint_url),
        client if client is not None else connect(settings, decode=False),
        settings.key_prefix,
        Path(settings.data_dir) / "cache" / "checkpoints",
        settings.checkpoint_cache_size,
    )
