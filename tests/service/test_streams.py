"""Event streams against a real ``ddpm api`` (uvicorn) process: open streams cost no
thread (the sync routes still answer), caps give 429, a bad Last-Event-ID gives 400,
streams end after their lifetime, finished jobs replay and close.

A TestClient cannot show thread starvation, hence a real server. No worker runs: jobs
stay queued (their streams idle) unless a test writes their events itself.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from svc_helpers import ROOT, make_settings, service_env, store_for

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """``ddpm api`` on a free port with its own key prefix."""

    def __init__(self, redis_url: str, data_dir: Path, log: Path, **over) -> None:
        self.settings = make_settings(redis_url, data_dir, **over)
        self.store = store_for(self.settings)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(self.port)],
            cwd=ROOT,
            env=service_env(self.settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(log.read_text()[-3000:])
            time.sleep(0.2)

    def job(self) -> str:
        job_id = self.store.create("generate", {"count": 1}).job_id
        return job_id

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class RawStream:
    """An SSE request on a plain socket: open until closed, read what has arrived."""

    def __init__(self, api: Api, job_id: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        self.status = int(self.buf.split(b" ", 2)[1])

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        return data

    def read_until(self, marker: bytes, timeout: float = 10) -> bytes:
        self.sock.settimeout(timeout)
        while marker not in self.buf:
            self.buf += self._recv()
        return self.buf

    def close(self) -> None:
        self.sock.close()


def _events(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            k, _, v = line.partition(":")
            fields[k] = v.strip()
        if "event" in fields:
            out.append(fields)
    return out


@pytest.fixture(scope="module")
def busy_api(redis_url, data_dir, tmp_path_factory) -> Iterator[Api]:
    """A server that lets one client hold hundreds of streams."""
    log = tmp_path_factory.mktemp("api") / "api.log"
    api = Api(redis_url, data_dir, log, max_streams_per_client=1000, queue_limit=1000)
    yield api
    api.stop()


@pytest.fixture(scope="module")
def capped_api(redis_url, data_dir, tmp_path_factory) -> Iterator[Api]:
    """Small caps, three API keys (three clients), a short lifetime and keep-alive."""
    log = tmp_path_factory.mktemp("api") / "api.log"
    api = Api(
        redis_url,
        data_dir,
        log,
        api_keys="k1,k2,k3",
        max_streams=4,
        max_streams_per_client=2,
        stream_lifetime=2.0,
        stream_keepalive=0.5,
    )
    yield api
    api.stop()


def test_200_idle_streams_leave_the_api_responsive(busy_api: Api) -> None:
    job_id = busy_api.job()
    streams = [RawStream(busy_api, job_id) for _ in range(200)]
    try:
        assert {s.status for s in streams} == {200}
        for s in streams[::20]:
            s.read_until(b"retry:")
        # Correctness, not speed: on a thread per stream these waited 4-11 s or timed out.
        with httpx.Client(base_url=busy_api.url, timeout=5) as c:
            for _ in range(3):
                assert c.get("/healthz").status_code == 200
                r = c.get(f"/jobs/{job_id}")
                assert r.status_code == 200 and r.json()["status"] == "queued"
                assert c.post("/generate", json={"count": 1, "steps": 2}).status_code == 202
        # The streams are alive and still delivering: a new event reaches one of them.
        busy_api.store.add_event(job_id, "progress", {"step": 1, "total": 2, "fraction": 0.5})
        assert b"event: progress" in streams[-1].read_until(b"event: progress")
    finally:
        for s in streams:
            s.close()


@pytest.mark.parametrize(
    "value",
    ["99999999999999999999-0", "0-18446744073709551616", "abc", "1-2-3", "-1-0", "1.5-0", "1-0x"],
)
def test_bad_last_event_id_gets_400_before_the_stream(busy_api: Api, value: str) -> None:
    job_id = busy_api.job()
    r = httpx.get(
        f"{busy_api.url}/jobs/{job_id}/events", headers={"Last-Event-ID": value}, timeout=10
    )
    assert r.status_code == 400, r.text
    assert "Last-Event-ID" in r.json()["detail"]


def test_largest_event_id_is_accepted(capped_api: Api) -> None:
    job_id = capped_api.job()
    last = "9999999999999999999-9999999999999999999"  # the largest the pattern allows
    s = RawStream(capped_api, job_id, {"X-API-Key": "k3", "Last-Event-ID": last})
    try:
        assert s.status == 200
        s.read_until(b"retry:")
    finally:
        s.close()


def test_finished_job_replays_and_closes(busy_api: Api) -> None:
    job_id = busy_api.job()
    store = busy_api.store
    claim = store.claim(job_id, "generate", "w@test")
    store.finish(job_id, "generate", "succeeded", claim.attempt, result={"images": []})
    r = httpx.get(f"{busy_api.url}/jobs/{job_id}/events", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert [e["event"] for e in events] == ["status", "status", "status", "done"]
    assert json.loads(events[-1]["data"]) == {"status": "succeeded", "result": {"images": []}}
    # Resuming after an event replays the rest only.
    r = httpx.get(
        f"{busy_api.url}/jobs/{job_id}/events",
        headers={"Last-Event-ID": events[1]["id"]},
        timeout=10,
    )
    assert [e["id"] for e in _events(r.text)] == [e["id"] for e in events[2:]]
    # Resuming after ``done`` gets ``done`` again (from the document) and the stream closes.
    r = httpx.get(
        f"{busy_api.url}/jobs/{job_id}/events",
        headers={"Last-Event-ID": events[-1]["id"]},
        timeout=10,
    )
    assert [e["event"] for e in _events(r.text)] == ["done"]


def test_dropped_event_stream_of_a_finished_job_gives_one_done(busy_api: Api) -> None:
    job_id = busy_api.job()
    store = busy_api.store
    store.finish(
        job_id,
        "generate",
        "failed",
        None,
        allowed=("queued",),
        error={"type": "X", "message": "boom"},
    )
    store.r.delete(store.job_key(job_id, "events"))
    r = httpx.get(f"{busy_api.url}/jobs/{job_id}/events", timeout=10)
    assert r.status_code == 200
    (done,) = _events(r.text)
    assert done["event"] == "done" and "id" not in done
    assert json.loads(done["data"]) == {
        "status": "failed",
        "error": {"type": "X", "message": "boom"},
    }


def test_unknown_job_is_404(busy_api: Api) -> None:
    r = httpx.get(f"{busy_api.url}/jobs/00000000-0000-4000-8000-000000000000/events")
    assert r.status_code == 404


def test_caps_give_429_and_slots_come_back(capped_api: Api) -> None:
    job_id = capped_api.job()
    k1 = [RawStream(capped_api, job_id, {"X-API-Key": "k1"}) for _ in range(2)]
    try:
        assert [s.status for s in k1] == [200, 200]
        third = httpx.get(
            f"{capped_api.url}/jobs/{job_id}/events", headers={"X-API-Key": "k1"}, timeout=10
        )
        assert third.status_code == 429, third.text
        assert int(third.headers["retry-after"]) > 0
        assert "2 open event streams" in third.json()["detail"]
        k2 = [RawStream(capped_api, job_id, {"X-API-Key": "k2"}) for _ in range(2)]
        try:
            assert [s.status for s in k2] == [200, 200]
            r = httpx.get(
                f"{capped_api.url}/jobs/{job_id}/events", headers={"X-API-Key": "k3"}, timeout=10
            )
            assert r.status_code == 429 and "too many open event streams (4)" in r.text
            assert int(r.headers["retry-after"]) > 0
        finally:
            for s in k2:
                s.close()
        # A closed connection gives its slot back.
        k1.pop().close()
        deadline = time.monotonic() + 10
        while True:
            s = RawStream(capped_api, job_id, {"X-API-Key": "k1"})
            if s.status == 200:
                k1.append(s)
                break
            s.close()
            assert time.monotonic() < deadline, "slot not given back"
            time.sleep(0.2)
    finally:
        for s in k1:
            s.close()


def test_lifetime_ends_the_stream_and_the_client_resumes(capped_api: Api) -> None:
    job_id = capped_api.job()
    store = capped_api.store
    t0 = time.monotonic()
    with httpx.stream(
        "GET", f"{capped_api.url}/jobs/{job_id}/events", headers={"X-API-Key": "k3"}, timeout=10
    ) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())  # returns only because the server ends the stream
    assert 1.5 < time.monotonic() - t0 < 8
    assert text.startswith("retry: ")
    assert ": keep-alive" in text and "reconnect with Last-Event-ID" in text
    (queued,) = _events(text)
    # Events written while the client was away arrive after it reconnects.
    store.add_event(job_id, "progress", {"step": 1, "total": 2, "fraction": 0.5})
    store.cancel(job_id, "generate")
    r = httpx.get(
        f"{capped_api.url}/jobs/{job_id}/events",
        headers={"X-API-Key": "k3", "Last-Event-ID": queued["id"]},
        timeout=10,
    )
    assert [e["event"] for e in _events(r.text)] == ["progress", "status", "done"]
