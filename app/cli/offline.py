"""The offline ``ddpm`` sub-commands over the model library: init, sample, convert.

Argument definitions import nothing heavy; torch is imported when a command
runs, so that the API process can build the whole ``ddpm`` parser without it.
Bad input ends with a one-line message and exit code 2 (:class:`UsageError`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from app.cli.common import UsageError, checkpoint_dir
from app.cli.options import add_generate_flags
from ddpm_core.config.names import AUTOCAST_SETTINGS

__all__ = [
    "SAMPLE_FLAGS",
    "FORMAT_FLAGS",
    "check_format_args",
    "add_commands",
    "check_sampling_args",
    "cmd_init",
    "cmd_sample",
    "cmd_convert",
]

# The generation options ``ddpm sample`` and ``ddpm eval`` take as flags (before the
# sampling-only ones).
SAMPLE_FLAGS = ("count", "seed", "steps", "sampler", "eta", "label", "guidance_scale")
FORMAT_FLAGS = ("output_format", "output_quality")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``init``, ``sample`` and ``convert`` on a sub-parser set."""
    p = sub.add_parser("init", help="write a freshly initialised (untrained) checkpoint")
    p.add_argument("out", type=Path, help="checkpoint directory to create")
    p.add_argument("--preset", default="tiny", help="UNet preset: tiny, small, ddpm-cifar10")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--channels", type=int, default=None, help="image channels (1 or 3)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--schedule", choices=["linear", "cosine"], default="linear")
    p.add_argument("--timesteps", type=int, default=1000, help="T of the forward process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing directory")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("sample", help="sample images from a checkpoint to PNG files and a grid")
    p.add_argument("checkpoint", help="checkpoint directory, or a built-in name (e.g. digits)")
    p.add_argument("-o", "--out", type=Path, default=Path("samples"), help="output directory")
    add_generate_flags(p, SAMPLE_FLAGS, remote=False)
    p.add_argument("--batch-size", type=int, default=64, help="images per network call")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--autocast",
        choices=AUTOCAST_SETTINGS,
        default=os.environ.get("DDPM_AUTOCAST", "auto"),
        help="the network's precision, chosen as the service chooses it: auto (bf16 on CUDA, "
        "and on a CPU with native bf16 where it measures >= 1.2x faster), bf16, none = fp32 "
        "(default: $DDPM_AUTOCAST or auto)",
    )
    p.add_argument(
        "--bf16", dest="autocast", action="store_const", const="bf16", help="--autocast bf16"
    )
    add_generate_flags(p, ["use_ema", *FORMAT_FLAGS], remote=False)
    p.add_argument("--nrow", type=int, default=None, help="images per grid row")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("convert", help="convert a diffusers UNet2DModel directory to a checkpoint")
    p.add_argument("source", type=Path, help="diffusers model dir (config.json + weights)")
    p.add_argument("out", type=Path, help="checkpoint directory to create")
    p.add_argument(
        "--variance-type",
        choices=["fixed_small", "fixed_large"],
        default=None,
        help="sampling variance, over the scheduler config's (default: its own, else fixed_large)",
    )
    p.add_argument(
        "--measure",
        metavar="DATASET",
        default=None,
        help="choose the sampling defaults by measuring samplers x steps on the converted "
        "weights against DATASET ('digits' or an image folder) instead of keeping the "
        "scheduler config's; the table goes to meta.json",
    )
    p.add_argument(
        "--measure-images", type=int, default=32, help="images per measured setting (32)"
    )
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_convert)


def cmd_init(args: argparse.Namespace) -> int:
    import torch

    from ddpm_core.checkpoint import CheckpointConfig, save_checkpoint
    from ddpm_core.unet import UNet, preset

    overrides = {}
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.channels is not None:
        if args.channels not in (1, 3):
            raise UsageError("--channels must be 1 or 3")
        overrides |= {"in_channels": args.channels, "out_channels": args.channels}
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    if args.out.exists() and not args.force:
        raise UsageError(f"{args.out} already exists (use --force to replace it)")
    try:
        unet_cfg = preset(args.preset, **overrides)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    torch.manual_seed(args.seed)
    model = UNet(unet_cfg)
    cfg = CheckpointConfig(
        unet=unet_cfg,
        schedule={"kind": args.schedule, "num_train_timesteps": args.timesteps},
        default_steps=min(50, args.timesteps),
    )
    meta = {
        "dataset": None,
        "training_steps": 0,
        "command": " ".join(sys.argv),
        "note": "untrained",
    }
    save_checkpoint(args.out, cfg, model, meta=meta, overwrite=args.force)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out} ({args.preset}, {n / 1e6:.2f}M parameters, untrained)")
    return 0


def check_sampling_args(args: argparse.Namespace) -> None:
    """--count, --batch-size, --seed and --eta, as ``sample`` and ``eval`` take them."""
    from ddpm_core.seeding import MAX_SEED

    if args.count < 1:
        raise UsageError("--count must be >= 1")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if not 0 <= args.seed <= MAX_SEED - args.count:
        raise UsageError(f"--seed must be in [0, {MAX_SEED - args.count}]")
    if args.eta is not None and not 0 <= args.eta <= 1:
        raise UsageError("--eta must be in [0, 1]")


def check_format_args(args: argparse.Namespace) -> None:
    """--format and --quality, as ``sample`` and ``remote generate`` take them."""
    if not 1 <= args.output_quality <= 100:
        raise UsageError("--quality must be in [1, 100]")


def cmd_sample(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ddpm_core.checkpoint import CheckpointError, load_checkpoint
    from ddpm_core.config.formats import IMAGE_FORMATS
    from ddpm_core.images import encode_image, make_grid
    from ddpm_core.pipeline import generate, resolve_device
    from ddpm_core.tuning import model_precision

    check_sampling_args(args)
    check_format_args(args)
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    if args.autocast not in AUTOCAST_SETTINGS:  # from $DDPM_AUTOCAST, which argparse trusts
        raise UsageError(f"--autocast must be one of {', '.join(AUTOCAST_SETTINGS)}")
    try:
        ckpt = load_checkpoint(
            checkpoint_dir(args.checkpoint), use_ema=args.use_ema is not False, device=device
        )
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    cfg = ckpt.config
    steps = cfg.default_steps if args.steps is None else args.steps
    if not 1 <= steps <= cfg.num_train_timesteps:
        raise UsageError(f"--steps must be in [1, {cfg.num_train_timesteps}]")
    if args.label is not None:
        if cfg.num_classes is None:
            raise UsageError("--label given, but this checkpoint is unconditional")
        if not 0 <= args.label < cfg.num_classes:
            raise UsageError(f"--label must be in [0, {cfg.num_classes - 1}]")
    if args.guidance_scale is not None and args.label is None:
        raise UsageError("--guidance needs --label")

    # Channels-last and the precision the service's engine would choose for this model,
    # measured the same way: a seed then means the same image in both.
    ckpt.model.to(memory_format=torch.channels_last)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    null = getattr(ckpt.model, "null_label", None)
    precision = model_precision(args.autocast, ckpt.model, shape, device, null, True)

    args.out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=args.count * steps, unit="img-step", disable=args.no_progress)
    started = time.perf_counter()

    def progress(step: int, total: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        bar.update(x.shape[0])

    images_t = generate(
        ckpt,
        count=args.count,
        seed=args.seed,
        steps=steps,
        sampler=args.sampler,
        eta=args.eta,
        labels=args.label,
        guidance_scale=args.guidance_scale,
        autocast_dtype=precision.dtype,
        callback=progress,
        batch_size=args.batch_size,
    ).cpu()
    bar.close()
    elapsed = time.perf_counter() - started
    ext = IMAGE_FORMATS[args.output_format].extension

    def encode(img: torch.Tensor) -> bytes:
        return encode_image(img, args.output_format, args.output_quality)

    for i, img in enumerate(images_t):
        (args.out / f"{i:05d}_seed{args.seed + i}.{ext}").write_bytes(encode(img))
    (args.out / f"grid.{ext}").write_bytes(encode(make_grid(images_t, nrow=args.nrow)))
    print(
        f"{args.count} images in {elapsed:.2f}s ({args.count / elapsed:.2f} img/s, "
        f"{steps} steps, {device}, {precision.name}: {precision.why}) -> {args.out}/grid.{ext}"
    )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ddpm_core.checkpoint import CheckpointError, save_checkpoint
    from ddpm_core.config.paths import scrub_paths
    from ddpm_core.convert import (
        ConversionError,
        checkpoint_config_from_diffusers,
        load_diffusers_dir,
    )

    if args.out.exists() and not args.force:
        raise UsageError(f"{args.out} already exists (use --force to replace it)")
    try:
        dconfig, model = load_diffusers_dir(args.source)
        cfg = checkpoint_config_from_diffusers(dconfig, model.config, args.variance_type)
    except (ConversionError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    # meta.json is served by the registry: the source by name, not by path.
    meta = {"converted_from": args.source.name, "command": scrub_paths(" ".join(sys.argv))}
    if args.measure is not None:
        cfg, meta["sampling_defaults"] = _measure_converted(args, cfg, model)
    try:
        save_checkpoint(args.out, cfg, model, meta=meta, overwrite=args.force)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    measured = ""
    if args.measure is not None:
        measured = f", measured defaults: {cfg.default_steps} {cfg.default_sampler} steps"
    print(f"wrote {args.out} (variance {cfg.variance_type}{measured})")
    return 0


def _measure_converted(args: argparse.Namespace, cfg, model):
    """``--measure``: the converted model's config with measured defaults, and the record."""
    from ddpm_core.checkpoint import Checkpoint
    from ddpm_core.data import DatasetError, load_dataset
    from ddpm_core.measured_defaults import (
        measure_defaults,
        reference_rows,
        with_measured_defaults,
    )

    if args.measure_images < 2:
        raise UsageError("--measure-images must be at least 2")
    conditional = cfg.num_classes is not None
    try:
        ds = load_dataset(args.measure, cfg.image_size, cfg.channels, conditional)
    except DatasetError as exc:
        raise UsageError(f"--measure: {exc}") from None
    if conditional and ds.num_classes != cfg.num_classes:
        raise UsageError(f"--measure: the model has {cfg.num_classes} classes, the dataset "
                         f"{ds.num_classes}")  # fmt: skip
    rows = reference_rows(len(ds))
    ck = Checkpoint(args.out, cfg, {}, model.eval(), "model")
    labels = ds.labels[rows] if conditional else None
    table = measure_defaults(ck, ds.images(rows), labels, images=args.measure_images,
                             guidance=cfg.default_guidance_scale)  # fmt: skip
    return with_measured_defaults(cfg, table)
