"""Labelled against unlabelled samples of the built-in `digits`: quality and variety.

For the checkpoint's default sampler and steps (or ``--sampler``/``--steps``) it samples
``-n`` images labelled 0-9 in turn at guidance 1 and at the checkpoint's default,
and ``-n`` images without a label (the null class: the unconditional model), then
prints the digits score, the Frechet distance to the real digits, the class balance
of the unlabelled ones (entropy of p(y), log 10 = 2.303 when balanced) and the
within-class variety (1.0: as varied as the real digits; classes of unlabelled
images by the classifier's prediction). Asserts nothing.

    OMP_NUM_THREADS=1 python bench/variety.py -n 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_core.builtin import builtin_path  # noqa: E402
from ddpm_core.checkpoint import load_checkpoint  # noqa: E402
from ddpm_core.metrics import (  # noqa: E402
    digits_score,
    real_digits_reference,
    within_class_variety,
)
from ddpm_core.pipeline import generate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=None, help="default: the built-in digits")
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    ckpt = load_checkpoint(args.checkpoint or builtin_path("digits"), device="cpu")
    cfg = ckpt.config
    sampler, steps = args.sampler or cfg.default_sampler, args.steps or cfg.default_steps
    labels = [i % 10 for i in range(args.n)]
    rows = []
    for name, lab, scale in (
        (f"labelled, guidance {cfg.default_guidance_scale:g}", labels, None),
        ("labelled, guidance 1", labels, 1.0),
        ("no label (unconditional)", None, None),
    ):
        start = time.perf_counter()
        images = generate(ckpt, args.n, 0, steps, sampler, labels=lab, guidance_scale=scale)
        elapsed = time.perf_counter() - start
        score = digits_score(images, lab)
        p_y = np.asarray(score.class_frequencies)
        entropy = float(-(p_y * np.log(p_y + 1e-12)).sum())
        rows.append((name, score, entropy, within_class_variety(images, lab), elapsed))
    real = real_digits_reference(cfg.image_size, args.n)
    rows.append(("held-out real digits", real, float("nan"), 1.0, 0.0))
    print(f"{args.n} images each, {sampler} {steps} steps, seed 0")
    print(
        "| samples | IS | confidence | label accuracy | Frechet | p(y) entropy "
        "| within-class variety |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, s, ent, var, _ in rows:
        acc = "-" if s.label_accuracy is None else f"{s.label_accuracy:.3f}"
        print(
            f"| {name} | {s.inception_score:.3f} | {s.confidence:.3f} | {acc} | "
            f"{s.frechet_distance:.3f} | {ent:.3f} | {var:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
