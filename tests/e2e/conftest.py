"""End-to-end fixtures: whole process trees (``ddpm serve``; workers killed and restarted)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def e2e_redis_url(redis_url: str) -> str:
    """The session's Redis (tests/conftest.py); every test uses a key prefix of its own."""
    return redis_url
