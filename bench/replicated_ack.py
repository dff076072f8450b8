"""What "acknowledged means replicated" costs: the control plane with and without WAIT.

A Sentinel group as real processes (tests/service/sentinel_group.py: master, replica, three
sentinels on loopback, the shipped settings) and ``ddpm api`` in front of it, started once
with DDPM_REDIS_REPLICATED_ACK=0 and once with 1, in alternating rounds. Each round posts
``--n`` generate jobs from ``--clients`` threads (no worker: the jobs stay queued) and
prints jobs/s and the POST latency percentiles; then the store alone (one thread, no HTTP):
``create`` and ``claim`` + ``finish`` per job, in ms. Prints, never asserts.

    .venv/bin/python bench/replicated_ack.py [--n 2000] [--clients 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "service"))

from sentinel_group import SentinelGroup  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(group: SentinelGroup, work: Path, ack: bool) -> tuple[subprocess.Popen, str]:
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
    env |= group.env() | {
        "DDPM_REDIS_REPLICATED_ACK": "1" if ack else "0",
        "DDPM_DATA_DIR": str(work / "data"),
        "DDPM_QUEUE_LIMIT": "1000000",
        "DDPM_MAX_JOBS_PER_CLIENT": "0",
        "DDPM_WEBHOOK_DISPATCHER": "false",
        "DDPM_KEY_PREFIX": f"bench-{ack}-{time.time_ns()}:",
    }
    log = open(work / f"api-{ack}.log", "ab")  # noqa: SIM115 - closed by the OS
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ddpm"), "api", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API did not start")


def _post_round(url: str, n: int, clients: int) -> tuple[float, list[float]]:
    """(jobs/s, POST latencies in ms) of n POST /generate from ``clients`` threads."""
    lat: list[float] = []
    lock = threading.Lock()
    left = iter(range(n))

    def run() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            http.post("/generate", json={"count": 1, "steps": 1, "seed": 0})  # warm
            while True:
                with lock:
                    i = next(left, None)
                if i is None:
                    return
                t = time.perf_counter()
                r = http.post("/generate", json={"count": 1, "steps": 1, "seed": i})
                dt = (time.perf_counter() - t) * 1000
                assert r.status_code == 202, r.text
                with lock:
                    lat.append(dt)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0), lat


def _store_round(group: SentinelGroup, ack: bool, n: int) -> tuple[float, float]:
    """(create ms, claim + finish ms) per job through the store, one thread."""
    from app.core.settings import Settings
    from app.core.store import store_from_settings

    s = Settings(
        redis_sentinels=group.sentinels,
        redis_password=group.password,
        redis_replicated_ack=ack,
        key_prefix=f"bench-store-{ack}-{time.time_ns()}:",
    )
    store = store_from_settings(s)
    t = time.perf_counter()
    ids = [store.create("generate", {"seed": i}).job_id for i in range(n)]
    create = (time.perf_counter() - t) * 1000 / n
    t = time.perf_counter()
    for job_id in ids:
        claim = store.claim(job_id, "generate", "bench")
        assert claim is not None
        assert store.finish(job_id, "generate", "succeeded", claim.attempt, result={})
    finish = (time.perf_counter() - t) * 1000 / n
    return create, finish


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="POSTs per round")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--store-n", type=int, default=2000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ddpm-ack-"))
    group = SentinelGroup(work / "sentinel")
    group.workdir.mkdir()
    rows: dict[bool, list[tuple[float, list[float], float, float]]] = {False: [], True: []}
    try:
        group.up()
        for _ in range(args.rounds):
            for ack in (False, True):
                proc, url = _api(group, work, ack)
                try:
                    rate, lat = _post_round(url, args.n, args.clients)
                finally:
                    proc.terminate()
                    proc.wait(30)
                create, finish = _store_round(group, ack, args.store_n)
                rows[ack].append((rate, lat, create, finish))
    finally:
        group.down()
    print(
        f"{args.n} POST /generate x {args.rounds} rounds, {args.clients} clients; store: "
        f"{args.store_n} jobs, one thread (loopback, master + 1 replica + 3 sentinels)"
    )
    print("| replicated ack | jobs/s | POST p50 ms | POST p99 ms | create ms | claim+finish ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for ack, runs in rows.items():
        lat = [x for _, ls, _, _ in runs for x in ls]
        rate = statistics.median(r for r, _, _, _ in runs)
        create = statistics.median(c for _, _, c, _ in runs)
        finish = statistics.median(f for _, _, _, f in runs)
        print(
            f"| {'on (WAIT 1)' if ack else 'off'} | {rate:.0f} | {_pct(lat, 50):.2f} | "
            f"{_pct(lat, 99):.2f} | {create:.3f} | {finish:.3f} |"
        )


if __name__ == "__main__":
    main()
