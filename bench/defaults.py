"""Measured sampling defaults (``ddpm_core.measured_defaults``) of a checkpoint trained on
a folder of coloured shapes (``tests/quality/shapes.py``), each cell also judged by the
shapes' own judge (colour inside the shape, Laplacian noise ratio), which uses none of
the project's quality code. Prints one row per cell; asserts nothing.

    python bench/defaults.py CHECKPOINT DATASET_FOLDER [-n 32] [--fid] [--json out.json]
    python bench/defaults.py digits digits --no-judge      # the built-in checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "quality"))

from shapes import judge  # noqa: E402

from app.cli.common import checkpoint_dir  # noqa: E402
from ddpm_core.checkpoint import load_checkpoint  # noqa: E402
from ddpm_core.data import load_dataset  # noqa: E402
from ddpm_core.measured_defaults import measure_defaults  # noqa: E402
from ddpm_core.pipeline import generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("dataset")
    ap.add_argument("-n", "--images", type=int, default=32)
    ap.add_argument("--judge-images", type=int, default=64)
    ap.add_argument("--fid", action="store_true")
    ap.add_argument("--no-judge", action="store_true", help="not a shapes folder: no judge")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ckpt = load_checkpoint(checkpoint_dir(args.checkpoint))
    cfg = ckpt.config
    ds = load_dataset(args.dataset, cfg.image_size, cfg.channels, True)
    data = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    features = None
    if args.fid:
        from ddpm_core.fid import InceptionFeatures

        features = InceptionFeatures()
    t0 = time.perf_counter()
    table = measure_defaults(
        ckpt, data, labels, images=args.images, guidance=cfg.default_guidance_scale,
        features=features,
    )  # fmt: skip
    cost = time.perf_counter() - t0
    n = args.judge_images
    y = torch.arange(n) % cfg.num_classes
    rows = []
    for c in table.cells:
        j = {"colour_right": float("nan"), "noise_ratio": float("nan")}
        if not args.no_judge:
            imgs = generate(ckpt, n, 1000, c.steps, c.sampler, 0.0, y, c.guidance)
            j = judge(imgs.numpy(), y.numpy(), data.numpy())
        rows.append(c.__dict__ | {"judge": j})
        print(
            f"{c.stage} {c.sampler:12s} {c.steps:4d} g={c.guidance} calls={c.network_calls:4d} "
            f"noise={c.noise_ratio:.2f} agree={c.label_agreement} fid={c.fid} "
            f"good={c.good_enough} | judge colour={j['colour_right']:.3f} "
            f"laplacian={j['noise_ratio']:.2f} ({c.seconds}s)",
            flush=True,
        )
    print(
        f"chosen {table.sampler} {table.steps} guidance {table.guidance}; measurement "
        f"{cost:.1f}s, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}; "
        f"knn leave-one-out {table.label_agreement_real}"
    )
    if args.json:
        args.json.write_text(json.dumps({"table": table.to_dict(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
