"""The client against an API and a worker run as separate processes: a full queue (429)
and an API restart in the middle of an event stream."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from client_helpers import Proc, free_port, service_env, submitted, wait_until

from app.client import Client, Progress

pytestmark = pytest.mark.timeout(180)


@dataclass
class Split:
    url: str
    api: Proc
    worker: Proc

    def restart_api(self) -> None:
        """Kill the API (SIGKILL: its open streams break) and start it again."""
        self.api.kill()
        self.api = Proc(self.api.args, self.api.env, self.api.log)


@pytest.fixture(scope="module")
def split(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    """``ddpm api`` and ``ddpm worker --queue gen`` with one job thread and a queue of one."""
    tmp = tmp_path_factory.mktemp("split")
    env = service_env(tmp / "data", redis_url, DDPM_QUEUE_LIMIT="1", DDPM_ADMIN_TOKEN="split-admin")
    port = free_port()
    worker = Proc(["worker", "--queue", "gen", "--concurrency", "1"], env, tmp / "worker.log")
    api = Proc(["api", "--port", str(port)], env, tmp / "api.log")
    s = Split(f"http://127.0.0.1:{port}", api, worker)
    try:
        wait_until(s.url, [api, worker])
        yield s
    finally:
        s.api.stop(10)
        s.worker.stop(30)


class _LogEvent(logging.Handler):
    """``seen`` is set once a log record containing ``text`` is emitted."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


def _running(url: str, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, f"job {job_id} did not start"
        time.sleep(0.05)


def test_submit_meeting_a_full_queue_succeeds_after_the_wait_once(split, caplog):
    """A runs, B waits in the queue (limit 1): C meets 429 + Retry-After. B is canceled
    meanwhile; C's one retry after Retry-After makes exactly one job, which then runs."""
    url = split.url
    before = submitted(url)
    with Client(url) as client:
        a = client.generate(count=4, steps=1000, label=1)
        _running(url, a.id)
        b = client.generate(count=1, steps=5)
        assert b.status == "queued"
        refused = _LogEvent("HTTP 429")
        logging.getLogger("ddpm.client").addHandler(refused)

        def cancel_b_once_c_was_refused() -> None:
            if refused.seen.wait(30):
                b.cancel()

        canceler = threading.Thread(target=cancel_b_once_c_was_refused)
        canceler.start()
        started = time.monotonic()
        try:
            with caplog.at_level(logging.INFO, "ddpm.client"):
                c = client.generate(count=1, seed=9, steps=5)
        finally:
            refused.seen.set()
            canceler.join(30)
            logging.getLogger("ddpm.client").removeHandler(refused)
        waited = time.monotonic() - started
        retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
        assert len(retries) == 1 and "HTTP 429" in retries[0], retries
        assert waited >= 4.5  # the service's Retry-After (5 s) was honoured
        assert submitted(url) - before == 3  # a, b and one c
        assert b.refresh().status == "canceled"
        a.cancel()
        assert c.wait(timeout=90).status == "succeeded"
        assert c.request["seed"] == 9


def test_wait_survives_an_api_restart_mid_stream(split, caplog):
    """The API is killed while wait() follows the job's events and started again; wait()
    reconnects with Last-Event-ID: progress goes on where it was, nothing twice."""
    reports: list[tuple[float, int]] = []
    events: list[str] = []
    go = threading.Event()
    restarted: list[float] = []

    def restart() -> None:
        go.wait(60)
        split.restart_api()
        restarted.append(time.monotonic())

    def on_progress(p: Progress) -> None:
        reports.append((time.monotonic(), p.step))
        events.append(json.dumps(p.data, sort_keys=True))
        if p.step >= 20:
            go.set()

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        with caplog.at_level(logging.INFO, "ddpm.client"), Client(split.url) as client:
            job = client.generate(count=2, steps=600, label=2)
            job.wait(timeout=150, on_progress=on_progress)
    finally:
        go.set()
        thread.join(60)
    assert restarted, "the API was not restarted"
    assert job.status == "succeeded"
    steps = [s for _, s in reports]
    # Step 0 may come twice, as two states (waiting for the engine, then started); a
    # replayed event would come again as it was.
    assert steps == sorted(steps) and steps[-1] == 600, steps
    assert len(events) == len(set(events)), "an event was delivered twice"
    assert any(t > restarted[0] for t, _ in reports)  # events came after the restart
    lost = [r.getMessage() for r in caplog.records if "event stream lost" in r.getMessage()]
    assert lost, "wait() did not see the stream break"
    assert Path(split.api.log).read_text().count("Uvicorn running") >= 2
