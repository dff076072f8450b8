"""End-to-end fixtures: whole process trees (``ddpm serve``; workers killed and restarted)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from svc_helpers import start_redis_server  # noqa: E402


@pytest.fixture(scope="session")
def e2e_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DDPM_TEST_REDIS_URL")
    if url:
        yield url
        return
    proc, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)
