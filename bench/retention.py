"""What one finished job costs: Redis bytes (while its events are kept, and after) and disk.

Runs the store's real transitions for a typical single-image job of the built-in digits
model (create with an Idempotency-Key, claim, progress updates, finish with its result)
and reads Redis' own MEMORY USAGE of every key the job owns; writes the job's real PNGs
through the disk result store and counts the bytes and blocks on disk. Prints, never
asserts.

    .venv/bin/python bench/retention.py [--jobs 200] [--progress-events 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--progress-events", type=int, default=8, help="per job (4 per second)")
    args = ap.parse_args()

    import torch

    from app.cli.service import EmbeddedRedis
    from app.core.settings import Settings
    from app.core.storage.results import DiskResults
    from app.core.store import store_from_settings
    from ddpm_core.builtin import builtin_path
    from ddpm_core.checkpoint import load_checkpoint
    from ddpm_core.images import png_bytes
    from ddpm_core.pipeline import generate

    tmp = Path(tempfile.mkdtemp(prefix="ddpm-retention-"))
    server = EmbeddedRedis(tmp, "bench").start()  # the Redis `ddpm serve` runs
    try:
        s = Settings(redis_url=server.url, redis_password="bench", data_dir=tmp / "data")
        store = store_from_settings(s)
        request = {
            "count": 1, "seed": 4611686018427387904, "steps": 25, "sampler": "ddpm", "eta": 0.0,
            "checkpoint": "digits@builtin", "label": 7, "guidance_scale": 2.0, "use_ema": True,
            "trajectory_frames": 0, "image_size": 16, "channels": 1,
        }  # fmt: skip
        ids = []
        for i in range(args.jobs):
            sub = store.create(
                "generate",
                request,
                {"result_store": "disk"},
                client="key:0123456789abcdef",
                idem_key=f"key:0123456789abcdef:generate:req-{i:08d}",
                body_fingerprint="f" * 32,
            )
            claim = store.claim(sub.job_id, "generate", "gen@host:12345")
            for k in range(args.progress_events):
                frac = (k + 1) / args.progress_events
                step = round(25 * frac)
                store.renew(
                    "generate",
                    {sub.job_id: claim.attempt},
                    {sub.job_id: {"step": step, "total": 25, "fraction": frac}},
                )
            url_ = f"/jobs/{sub.job_id}"
            store.finish(
                sub.job_id,
                "generate",
                "succeeded",
                claim.attempt,
                result={
                    "images": [{"index": 0, "seed": 1, "url": f"{url_}/images/0.png"}],
                    "grid_url": f"{url_}/grid.png",
                    "trajectory_url": None,
                },
                result_attempt=claim.attempt,
                metrics={"network_calls": 25, "shared_calls": 25, "max_batch_size": 32,
                         "mean_batch_size": 30.5, "worker": "gen@host:12345", "attempt": 1,
                         "run_seconds": 0.4012},
            )  # fmt: skip
            ids.append(sub.job_id)

        def usage(key: str) -> int:
            return int(store.r.memory_usage(key, samples=0) or 0)

        doc = sum(usage(store.job_key(j)) for j in ids) / len(ids)
        events = sum(usage(store.job_key(j, "events")) for j in ids) / len(ids)
        idem = sum(
            usage(store.key("idem", f"key:0123456789abcdef:generate:req-{i:08d}"))
            for i in range(len(ids))
        ) / len(ids)
        expiry = usage(store.key("expiry")) / len(ids)
        info = store.r.info("memory")

        torch.set_num_threads(1)
        ckpt = load_checkpoint(builtin_path("digits"))
        img = generate(ckpt, count=1, seed=1, labels=7)
        results = DiskResults(s.data_dir)
        for j in ids[:50]:  # what the worker writes for a one-image job
            results.put(j, "0.png", png_bytes(img[0]), 1)
        files = [p for p in (Path(s.data_dir) / "results").rglob("*") if p.is_file()]
        apparent = sum(p.stat().st_size for p in files) / 50
        blocks = sum(os.stat(p).st_blocks * 512 for p in files) / 50
        dirs = [p for p in (Path(s.data_dir) / "results").rglob("*") if p.is_dir()]
        dir_blocks = sum(os.stat(p).st_blocks * 512 for p in dirs) / 50
    finally:
        server.stop()

    kept = doc + idem + expiry
    print(f"single-image job, {args.progress_events} progress events, {args.jobs} jobs")
    print(
        f"redis: document {doc:.0f} B, event stream {events:.0f} B, idempotency key {idem:.0f} B,"
    )
    print(f"       expiry index {expiry:.0f} B per job; used_memory {info['used_memory_human']}")
    print(f"redis per finished job: {kept + events:.0f} B while its events are kept,")
    print(f"       {kept:.0f} B after (events dropped {Settings().events_ttl} s after done)")
    print(f"disk: {apparent:.0f} B of PNG, {blocks + dir_blocks:.0f} B allocated (blocks, folders)")
    for rate in (1, 10, 100, 300):
        for ttl_h in (1, 24):
            n = rate * ttl_h * 3600
            print(
                f"  {rate:>3} jobs/s, job TTL {ttl_h:>2} h: {n * kept / 2**30:7.2f} GiB Redis, "
                f"{n * (blocks + dir_blocks) / 2**30:7.2f} GiB disk"
            )


if __name__ == "__main__":
    main()
