"""The OpenAPI document is the contract: schemathesis against a live ``ddpm serve``.

Every check (tests/contract/schemathesis.toml), all phases (examples, coverage,
fuzzing, stateful), a fixed seed and a bounded case budget: no 5xx, no response
outside the document (status, content type, headers, body), no invalid request
accepted. The admin token goes with every request, so admin routes are exercised too
(and ``ignored_auth`` checks that they refuse requests without it).

``ddpm serve`` runs with small limits so that fuzzed jobs are cheap, no train worker
(fuzzed training runs stay queued), and a short stream lifetime so that a stream of a
job that never finishes ends. Longer run by hand: README, "API contract".
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
BIN = Path(sys.executable).parent
# About 2 minutes on a 2-core machine (examples + coverage + fuzzing + stateful).
MAX_EXAMPLES = int(os.environ.get("DDPM_CONTRACT_EXAMPLES", "40"))
SEED = 20261126

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(data: Path, redis_url: str | None) -> dict[str, str]:
    """The environment of the ``ddpm serve`` under test (also used by hand)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
    env |= {
        "DDPM_DATA_DIR": str(data),
        "DDPM_KEY_PREFIX": f"ddpm-contract-{uuid.uuid4().hex[:8]}:",
        "DDPM_DEVICE": "cpu",
        "DDPM_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "DDPM_MAX_COUNT": "4",
        "DDPM_MAX_STEPS": "25",
        "DDPM_GEN_CONCURRENCY": "4",
        "DDPM_STREAM_LIFETIME": "5",
        # Long polls of queued training runs (no train worker) answer after 3 s, not the
        # 60 the coverage phase asks for: that alone was 2 of the test's 2.5 minutes.
        "DDPM_MAX_WAIT": "3",
        "DDPM_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    if redis_url:
        env["DDPM_REDIS_URL"] = redis_url
    return env


@pytest.fixture(scope="module")
def served(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, admin token) of a live ``ddpm serve``."""
    tmp = tmp_path_factory.mktemp("contract")
    data = tmp / "data"
    port = _free_port()
    log_path = tmp / "serve.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--no-train-worker"],
        cwd=ROOT,
        env=serve_env(data, redis_url),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log_path.read_text()[-4000:])
            time.sleep(0.3)
        yield url, (data / "admin_token").read_text().strip()
    finally:
        proc.send_signal(signal.SIGTERM)  # serve stops its children
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def schemathesis_argv(url: str, token: str, max_examples: int, seed: int) -> list[str]:
    """The schemathesis command line (all checks come from the config file)."""
    return [
        str(BIN / "schemathesis"),
        "--config-file", str(CONFIG),
        "run", f"{url}/openapi.json",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(max_examples),
        "--seed", str(seed),
        "--header", f"Authorization: Bearer {token}",
        # A long poll (GET /jobs/{id}?wait=N) may rightly hold its answer for N seconds
        # (DDPM_MAX_WAIT above) on a job that stays queued (training: no train worker).
        "--request-timeout", "30",
        "--workers", "1",
        "--no-color",
    ]  # fmt: skip


def test_the_api_keeps_its_openapi_contract(served: tuple[str, str], tmp_path: Path) -> None:
    url, token = served
    argv = schemathesis_argv(url, token, MAX_EXAMPLES, SEED)
    r = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=540, env=dict(os.environ)
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-12000:]
    print(out[-1500:])  # the summary, with the case count (pytest -s or -rP shows it)
    m = re.search(r"(\d+) generated, (\d+) passed", out)
    assert m and m[1] == m[2], out[-4000:]
    # A run that tests next to nothing would be a test that checks nothing.
    assert int(m[1]) >= 20 * MAX_EXAMPLES, out[-4000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅ +{phase}", out), f"phase {phase} did not pass:\n{out[-4000:]}"
