"""Quality per step for the built-in `digits` checkpoint: DDPM, DDIM and DPM-Solver++.

For every (sampler, steps) cell it samples ``-n`` images with the checkpoint's
defaults otherwise (labels 0-9 in turn, its guidance scale, EMA weights, seed 0,
one batch), scores them with the digits score of ``ddpm_core.metrics`` (what
``ddpm eval`` prints) and times the sampling. 1000-step DDPM is the reference:
a cell "reaches" it when its label accuracy is at least the reference's minus
0.01, its IS at least 0.99 of the reference's, its detail RMS (the energy the
8x8 classifier cannot see) at most 1.1 times the reference's, and its Frechet
distance to the real digits (which, unlike the others, does not saturate) at
most 1.1 times the reference's. Last, the cheapest cell at
that quality and diffusers' DDPMPipeline on the same network (unconditional: it
has no labels; random weights: speed does not depend on them; 1000 steps timed
over 10) are timed alternately, median of 3, to state images/s at equal quality
as one ratio (the grid's own per-cell times are noisy on a busy host).

With ``--fid`` each cell also gets its FID against all 1797 digits at the model's
16x16, upscaled to Inception's 299x299 (``ddpm_core.fid``; the reference statistics
are cached). On one CPU core Inception takes ~0.5 s per image: budget ~15 minutes
for the digits statistics and ~100 s per cell of 200 images.

Run single-threaded (OMP_NUM_THREADS=1); this prints figures and asserts nothing.

    OMP_NUM_THREADS=1 python bench/quality.py                 # -n 200, ~15-45 min on 1 core
    OMP_NUM_THREADS=1 python bench/quality.py -n 500 --json q.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_core.builtin import builtin_path  # noqa: E402
from ddpm_core.checkpoint import load_checkpoint  # noqa: E402
from ddpm_core.metrics import digits_score, noise_reference, real_digits_reference  # noqa: E402
from ddpm_core.pipeline import generate  # noqa: E402


def reaches(cell: dict, ref: dict) -> bool:
    """Whether ``cell`` has the reference's quality (see the module doc)."""
    return (
        cell["label_accuracy"] >= ref["label_accuracy"] - 0.01
        and cell["inception_score"] >= 0.99 * ref["inception_score"]
        and cell["detail_rms"] <= 1.1 * ref["detail_rms"]
        and cell["frechet_distance"] <= 1.1 * ref["frechet_distance"]
    )


def run_cell(ckpt, sampler: str, steps: int, n: int, fid_ref=None) -> dict:
    labels = [i % 10 for i in range(n)]
    start = time.perf_counter()
    images = generate(ckpt, n, seed=0, steps=steps, sampler=sampler, labels=labels, batch_size=n)
    elapsed = time.perf_counter() - start
    score = digits_score(images, labels)
    extra = {}
    if fid_ref is not None:
        from ddpm_core.fid import fid

        extractor, ref = fid_ref
        extra["fid"] = round(fid(extractor.stats(images), ref), 3)
    return extra | {
        "sampler": sampler,
        "steps": steps,
        "n": n,
        "inception_score": round(score.inception_score, 3),
        "label_accuracy": round(score.label_accuracy or 0.0, 4),
        "confidence": round(score.confidence, 4),
        "detail_rms": round(score.detail_rms or 0.0, 4),
        "frechet_distance": round(score.frechet_distance or 0.0, 4),
        "seconds_per_image": round(elapsed / n, 4),
    }


def ratio_to_diffusers(ckpt, n: int, sampler: str, steps: int, repeats: int = 3) -> dict:
    """Seconds per image of ours (``sampler``/``steps``, guided and unguided) and of
    diffusers' DDPMPipeline at 1000 steps (timed over 10, x100), the three alternating,
    median of ``repeats``: the per-cell times of the grid are too noisy on a busy host."""
    import statistics

    import diffusers

    from ddpm_core.convert import diffusers_config

    cfg = diffusers_config(ckpt.config.unet) | {"num_class_embeds": None}
    unet = diffusers.UNet2DModel(**cfg).eval()
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    labels = [i % 10 for i in range(n)]

    def ours(lab) -> None:
        generate(ckpt, n, seed=0, steps=steps, sampler=sampler, labels=lab, batch_size=n)

    def theirs() -> None:
        pipe(batch_size=n, num_inference_steps=10, output_type="np")

    pipe(batch_size=n, num_inference_steps=2, output_type="np")  # warm-up
    times: dict[str, list[float]] = {"guided": [], "unguided": [], "diffusers": []}
    for _ in range(repeats):
        for name, fn, scale in (
            ("guided", lambda: ours(labels), 1.0),
            ("unguided", lambda: ours(None), 1.0),
            ("diffusers", theirs, 100.0),
        ):
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / n * scale)
    return {k: statistics.median(v) for k, v in times.items()}


def markdown(cells: list[dict], ref: dict) -> str:
    head = (
        "| sampler | steps | IS (max 10) | label accuracy | confidence | detail RMS "
        "| Frechet | s/image | reaches 1000-step DDPM |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for c in cells:
        mark = "reference" if c is ref else ("yes" if reaches(c, ref) else "no")
        lines.append(
            f"| {c['sampler']} | {c['steps']} | {c['inception_score']:.3f} | "
            f"{c['label_accuracy']:.3f} | {c['confidence']:.3f} | {c['detail_rms']:.3f} | "
            f"{c['frechet_distance']:.3f} | {c['seconds_per_image']:.3f} | {mark} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="images per cell")
    ap.add_argument("--steps", default="5,10,20,50,100")
    ap.add_argument("--samplers", default="ddpm,ddim,dpm++2m,dpm++2m-sde")
    ap.add_argument("--ref-steps", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None, help="also write the cells as JSON")
    ap.add_argument("--fid", action="store_true", help="also the FID of every cell (slow on CPU)")
    ap.add_argument(
        "--reuse", type=Path, default=None, help="take cells already in this --json output"
    )
    args = ap.parse_args()
    done = {}
    if args.reuse:
        for c in json.loads(args.reuse.read_text())["cells"]:
            done[(c["sampler"], c["steps"], c["n"])] = c

    def cell(sampler: str, steps: int) -> dict:
        key = (sampler, steps, args.n)
        if key in done and (not args.fid or "fid" in done[key]):
            return done[key]
        return run_cell(ckpt, sampler, steps, args.n, fid_ref)

    torch.manual_seed(0)
    ckpt = load_checkpoint(builtin_path("digits"), device="cpu")
    started = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}; {args.n} images per cell, "
        f"guidance {ckpt.config.default_guidance_scale}",
        flush=True,
    )
    fid_ref = None
    if args.fid:
        from ddpm_core.fid import InceptionFeatures, reference_stats

        extractor = InceptionFeatures("cpu")
        t0 = time.perf_counter()
        ref_stats = reference_stats("digits", ckpt.config.image_size, 1, extractor)
        print(f"FID reference: {ref_stats.n} digits ({time.perf_counter() - t0:.0f}s)", flush=True)
        fid_ref = (extractor, ref_stats)
    cells = []
    for sampler in args.samplers.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            cells.append(cell(sampler, steps))
            print(json.dumps(cells[-1]), flush=True)
    ref = cell("ddpm", args.ref_steps)
    print(json.dumps(ref), flush=True)
    cells.append(ref)

    real = real_digits_reference(ckpt.config.image_size, args.n)
    noise = noise_reference(ckpt.config.image_size, args.n)
    print()
    print(markdown(cells, ref))
    print(
        f"\n{real.n} held-out real digits: IS {real.inception_score:.3f}, accuracy "
        f"{real.label_accuracy:.3f}, detail RMS {real.detail_rms:.3f}, Frechet "
        f"{real.frechet_distance:.3f}; {noise.n} noise images: IS {noise.inception_score:.3f}, "
        f"Frechet {noise.frechet_distance:.3f}"
    )
    fewest = {}
    for sampler in args.samplers.split(","):
        ok = [
            c["steps"]
            for c in cells
            if c["sampler"] == sampler and c is not ref and reaches(c, ref)
        ]
        fewest[sampler] = min(ok) if ok else None
        print(f"fewest {sampler} steps at {args.ref_steps}-step DDPM quality: {fewest[sampler]}")

    # The cheapest cell at the reference's quality, by its network calls.
    best = min((c for c in cells if c is not ref and reaches(c, ref)), key=lambda c: c["steps"])
    try:
        t = ratio_to_diffusers(ckpt, args.n, best["sampler"], best["steps"])
    except ImportError:
        t = None
    if t is not None:
        print(
            f"ours at equal quality ({best['sampler']}, {best['steps']} steps): "
            f"{t['guided']:.4f} s/image guided, {t['unguided']:.4f} unguided; diffusers "
            f"DDPMPipeline, 1000 steps (timed over 10, unconditional): {t['diffusers']:.3f} "
            f"s/image -> {t['diffusers'] / t['guided']:.0f}x the images/s guided, "
            f"{t['diffusers'] / t['unguided']:.0f}x unguided"
        )
    print(f"total {time.perf_counter() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({"cells": cells, "fewest": fewest}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
