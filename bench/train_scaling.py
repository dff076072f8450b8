"""Training throughput with 1 and N data-parallel processes: ``ddpm train`` as a user runs
it, the built-in digits network (1x16x16, 1.54M parameters) and its global batch of 96.

Each configuration runs as its own command; images/s is the global batch over the median
step time of the steps after a warm-up, read from ``--progress-file``. The same global
batch means the same training in every configuration: only the wall time differs. Prints,
never asserts.

    .venv/bin/python bench/train_scaling.py [--steps 60] [--warmup 10] [--device cpu]
    # on a GPU host: --device cuda --processes 1,2,4,8 (one process per GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODEL = [
    "--dataset", "digits", "--preset", "tiny", "--unet", "channel_mult=[1,2,2]",
    "--unet", "num_res_blocks=2", "--unet", "attention_resolutions=[]", "--unet", "dropout=0.0",
    "--image-size", "16", "--channels", "1", "--class-cond", "--schedule", "cosine",
    "--lr", "5e-4", "--warmup", "20", "--seed", "0", "--sample-count", "4",
]  # fmt: skip


def run(processes: int, threads: int, steps: int, batch: int, device: str, tmp: Path) -> dict:
    out, progress = tmp / f"p{processes}t{threads}", tmp / f"p{processes}t{threads}.jsonl"
    cmd = [
        sys.executable, "-m", "app.cli.train", "train", *MODEL, "--steps", str(steps),
        "--batch-size", str(batch), "--device", device, "--out", str(out),
        "--progress-file", str(progress), "--no-progress",
    ]  # fmt: skip
    if processes > 1:
        cmd += ["--nproc-per-node", str(processes)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    return {"records": [x for x in records if "event" not in x], "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    ap.add_argument("--batch-size", type=int, default=96, help="the global batch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--configs",
        default="1x1,2x1,1x2",
        help="PROCESSESxTHREADS, comma-separated (threads: OMP_NUM_THREADS of each process)",
    )
    args = ap.parse_args()

    import torch

    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"device {args.device}, global batch {args.batch_size}, "
        f"{args.steps} steps ({args.warmup} of warm-up)"
    )
    print()
    print(
        "| processes x threads | images/s | median step ms | wall s (with start-up) | final loss |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs.split(","):
            processes, threads = (int(x) for x in config.split("x"))
            res = run(processes, threads, args.steps, args.batch_size, args.device, Path(tmp))
            times = [r["elapsed_s"] for r in res["records"]]
            kept = times[args.warmup :]
            steps = [b - a for a, b in zip(kept, kept[1:], strict=False)]
            step = statistics.median(steps)
            final = res["records"][-1]["loss_raw"]
            print(
                f"| {processes} x {threads} | {args.batch_size / step:.0f} | {1000 * step:.0f} "
                f"| {res['wall']:.1f} | {final:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
