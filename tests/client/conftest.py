"""Fixtures of the client tests: a live ``ddpm serve`` for the module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from client_helpers import Proc, free_port, service_env, wait_until


@dataclass
class Served:
    url: str
    port: int
    data: Path
    env: dict[str, str]  # the environment of a `ddpm remote` user of this service
    admin_token: str


def _broken_checkpoint(data: Path) -> None:
    """``broken@1``: the built-in digits config with unreadable weights, so the API accepts
    jobs on it and the worker fails them."""
    from ddpm_core.builtin import builtin_path

    dest = data / "checkpoints" / "broken" / "1"
    dest.mkdir(parents=True)
    shutil.copy(Path(builtin_path("digits")) / "config.json", dest / "config.json")
    for name in ("model.safetensors", "ema.safetensors"):
        (dest / name).write_bytes(b"not a safetensors file")


@pytest.fixture(scope="module")
def served(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``ddpm serve`` (API, gen worker, train worker) on the session's Redis, serving the
    built-in ``digits``, with the shipped settings: ``ddpm sample`` runs the network in the
    same layout (channels-last) and chooses its precision by the same measurement, so
    the images of both are the same, bit for bit (bf16 included, on this CPU)."""
    tmp = tmp_path_factory.mktemp("served")
    data = tmp / "data"
    _broken_checkpoint(data)
    port = free_port()
    env = service_env(data, redis_url)
    proc = Proc(["serve", "--port", str(port), "--concurrency", "8"], env, tmp / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(url, [proc])
        token = (data / "admin_token").read_text().strip()
        user_env = {k: v for k, v in env.items() if not k.startswith("DDPM_")} | {"DDPM_URL": url}
        yield Served(url, port, data, user_env, token)
    finally:
        proc.stop(60)
