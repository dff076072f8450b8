"""The training loop: DDPM training of a UNet (Ho et al. 2020, Algorithm 1).

    repeat: x0 ~ data, t ~ Uniform{0..T-1}, eps ~ N(0, I)
            take a gradient step on || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1-abar_t) eps, t) ||^2

or, with ``prediction_type`` v_prediction or sample, on the same loss with the target
v = sqrt(abar_t) eps - sqrt(1-abar_t) x0 (Salimans & Ho 2022) or x0 in place of eps.
AdamW, linear warm-up then cosine or constant learning rate, gradient clipping and
accumulation, optional bf16/fp16 autocast, an EMA of the weights, and label dropout
for classifier-free guidance (Ho & Salimans 2022, Algorithm 1).

Everything random in a step (batch indices, flips, t, eps, label dropout) is
drawn from a generator seeded by (seed, step), and dropout draws from the global
torch RNG whose state is saved, so a resumed run reproduces the uninterrupted
one exactly. The resumable state is saved without pickle: tensors through
``torch.save`` of plain containers (read back with ``weights_only=True``) and
scalars as JSON.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ddpm_core.checkpoint import Checkpoint, CheckpointConfig, non_finite_tensors, save_checkpoint
from ddpm_core.config.names import PREDICTION_TYPES, SAMPLERS
from ddpm_core.config.paths import scrub_paths
from ddpm_core.config.unet import UNetConfig, training_unet_config
from ddpm_core.data import ImageDataset, load_dataset
from ddpm_core.diffusion import diffusion_loss, q_sample, training_target
from ddpm_core.distributed import setup as setup_distributed
from ddpm_core.ema import EMA
from ddpm_core.images import make_grid, png_bytes
from ddpm_core.pipeline import generate
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.unet import UNet

__all__ = [
    "STATE_DIR",
    "MAX_NONFINITE_STEPS",
    "TrainingDiverged",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "lr_at",
    "batch_indices",
    "build_unet_config",
    "public_train_config",
    "train",
    "command_line",
]

STATE_DIR = "train_state"  # inside the checkpoint directory
_MIX = 1_000_003  # odd multiplier that spreads (seed, step) over distinct generator seeds
# Consecutive steps with a non-finite loss that are skipped before the run is given up.
MAX_NONFINITE_STEPS = 5


class TrainingDiverged(RuntimeError):
    """The loss or the weights became non-finite: the run stops and saves nothing more."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (JSON-serialisable via ``to_dict``)."""

    dataset: str = "digits"
    out: str = "runs/digits"
    # Model
    preset: str = "tiny"
    image_size: int = 16
    channels: int = 1
    unet_overrides: dict = field(default_factory=dict)
    class_cond: bool = False  # digits: its labels; a folder: labels from sub-folders
    p_uncond: float = 0.1  # label dropout for classifier-free guidance
    random_flip: bool = False
    # Diffusion
    schedule: str = "linear"
    timesteps: int = 1000
    loss: str = "mse"
    prediction_type: str = "epsilon"  # what the network predicts: epsilon, v_prediction, sample
    # Optimisation
    steps: int = 1000
    batch_size: int = 64
    accumulate: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 100
    lr_schedule: str = "cosine"  # or "constant"
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    precision: str = "no"  # no | bf16 | fp16
    # Saving and previews
    save_every: int = 0  # 0: only at the end
    sample_every: int = 0  # 0: only the final preview
    sample_count: int = 16
    default_steps: int = 50  # the checkpoint's default sampling steps
    default_sampler: str = "ddim"
    default_eta: float = 0.0
    guidance_scale: float = 1.0  # the checkpoint's default guidance (conditional models)
    # Execution
    device: str = "auto"
    compile: bool = False
    channels_last: bool = False
    seed: int = 0
    resume_from: str | None = None

    def __post_init__(self) -> None:
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # JSON gives a list
        problems = []
        floats = {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "p_uncond": self.p_uncond,
            "min_lr_ratio": self.min_lr_ratio,
            "ema_decay": self.ema_decay,
            "default_eta": self.default_eta,
            "guidance_scale": self.guidance_scale,
            "grad_clip": 1.0 if self.grad_clip is None else self.grad_clip,
        }
        problems += [f"{k} must be finite" for k, v in floats.items() if not math.isfinite(v)]
        if not self.weight_decay >= 0:
            problems.append("weight_decay must be >= 0")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            # (NaN fails every comparison, so it lands here too)
            problems.append("adam_betas must be two numbers in [0, 1)")
        if self.steps < 1:
            problems.append("steps must be >= 1")
        if self.batch_size < 1 or self.accumulate < 1:
            problems.append("batch_size and accumulate must be >= 1")
        if self.lr <= 0:
            problems.append("lr must be > 0")
        if self.warmup < 0:
            problems.append("warmup must be >= 0")
        if self.lr_schedule not in ("cosine", "constant"):
            problems.append(f"lr_schedule must be cosine or constant, not {self.lr_schedule!r}")
        if self.precision not in ("no", "bf16", "fp16"):
            problems.append(f"precision must be no, bf16 or fp16, not {self.precision!r}")
        if self.loss not in ("mse", "l1"):
            problems.append(f"loss must be mse or l1, not {self.loss!r}")
        if self.schedule not in ("linear", "cosine"):
            problems.append(f"schedule must be linear or cosine, not {self.schedule!r}")
        if not 0.0 <= self.p_uncond < 1.0:
            problems.append("p_uncond must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append("ema_decay must be in [0, 1)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append("grad_clip must be > 0 (or None)")
        if self.channels not in (1, 3):
            problems.append("channels must be 1 or 3")
        if self.save_every < 0 or self.sample_every < 0:
            problems.append("save_every and sample_every must be >= 0")
        if self.default_sampler not in SAMPLERS:
            problems.append(
                f"default_sampler must be one of {', '.join(SAMPLERS)}, "
                f"not {self.default_sampler!r}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            problems.append(
                f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                f"not {self.prediction_type!r}"
            )
        if not 0.0 <= self.default_eta <= 1.0:
            problems.append("default_eta must be in [0, 1]")
        if not 1 <= self.default_steps <= self.timesteps:
            problems.append("default_steps must be in [1, timesteps]")
        if self.seed < 0:
            problems.append("seed must be >= 0")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class TrainProgress:
    """What the progress callback receives after every optimizer step."""

    step: int
    total_steps: int
    loss: float  # smoothed (bias-corrected EMA over ~50 steps)
    loss_raw: float  # this step's loss (NaN for a skipped step)
    lr: float
    images_per_sec: float
    skipped_steps: int = 0
    elapsed_s: float = 0.0
    sample_path: str | None = None  # set on steps that wrote a preview grid
    sample_png: bytes | None = None
    checkpoint_path: str | None = None  # set on steps that saved a checkpoint


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    total_steps: int
    final_loss: float  # smoothed loss at the last step
    losses: list[float]  # raw loss of every step run in this call (NaN: skipped)
    skipped_steps: int
    stopped: bool  # stopped early by the callback / should_stop
    elapsed_s: float
    device: str


ProgressFn = Callable[[TrainProgress], bool | None]


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up over ``warmup``
    steps, lr * (step+1)/warmup, then constant or cosine,
    lr * (m + (1-m) * (1 + cos(pi * p)) / 2) with p the post-warm-up progress in [0, 1]."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup)
    p = min(1.0, (step - cfg.warmup) / span)
    m = cfg.min_lr_ratio
    return cfg.lr * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * p)))


def batch_indices(seed: int, step: int, per_step: int, n: int) -> torch.Tensor:
    """Dataset indices of optimizer step ``step``: a function of (seed, step) alone.

    Sample number p = step * per_step + i is element p mod n of the permutation of
    epoch p // n, that permutation drawn from a generator seeded by (seed, epoch):
    every image is seen once per epoch, and resuming needs no sampler state.
    """
    pos = torch.arange(step * per_step, (step + 1) * per_step)
    epochs, offsets = pos // n, pos % n
    out = torch.empty(per_step, dtype=torch.long)
    for e in epochs.unique().tolist():
        g = torch.Generator().manual_seed(seed * _MIX + e)
        perm = torch.randperm(n, generator=g)
        sel = epochs == e
        out[sel] = perm[offsets[sel]]
    return out


def build_unet_config(cfg: TrainConfig, num_classes: int | None) -> UNetConfig:
    """The run's network (ConfigError, a ValueError, names a bad ``unet_overrides`` field)."""
    return training_unet_config(
        cfg.preset, cfg.image_size, cfg.channels, num_classes, cfg.unet_overrides
    )


def _public_name(path: str | None) -> str | None:
    """A dataset or directory by name: the last component of a path, never the path."""
    return None if path is None else (Path(path).name or str(path))


def public_train_config(cfg: TrainConfig) -> dict:
    """``cfg`` as meta.json records it: datasets and directories by name, not by path."""
    d = cfg.to_dict()
    for key in ("dataset", "out", "resume_from"):
        d[key] = _public_name(d[key])
    return d


def _autocast(device: torch.device, precision: str):
    if precision == "no":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# -- resumable state --------------------------------------------------------------------


def _save_state(
    ckpt_dir: Path,
    cfg: TrainConfig,
    step: int,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ema: EMA,
    scaler: torch.amp.GradScaler | None,
    scalars: dict,
) -> None:
    """Write ``ckpt_dir/train_state``; ``ckpt_dir`` is the checkpoint's temporary directory,
    renamed into place with the weights, so state and weights are never out of step."""
    tmp = ckpt_dir / STATE_DIR
    tmp.mkdir(parents=True)
    cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}  # noqa: E731
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    np_state = np.random.get_state()
    # Optimizer state is a nested dict of tensors and numbers: loadable with weights_only=True.
    torch.save(
        {"model": cpu(model.state_dict()), "ema": ema.state_dict(), "optimizer": opt.state_dict()},
        tmp / "tensors.pt",
    )
    torch.save(rng | {"numpy": torch.from_numpy(np_state[1].copy())}, tmp / "rng.pt")
    py_state = random.getstate()
    state = {
        "step": step,
        "train_config": cfg.to_dict(),
        "ema": ema.extra_state(),
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "lr_scheduler": {"kind": cfg.lr_schedule, "last_step": step, "lr": lr_at(cfg, step)},
        "numpy_rng": {
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        **scalars,
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")


def _load_state(path: Path) -> tuple[dict, dict, dict]:
    state_dir = path / STATE_DIR
    if not (state_dir / "state.json").exists():
        raise FileNotFoundError(f"{path} has no resumable training state ({STATE_DIR}/)")
    state = json.loads((state_dir / "state.json").read_text())
    tensors = torch.load(state_dir / "tensors.pt", map_location="cpu", weights_only=True)
    rng = torch.load(state_dir / "rng.pt", map_location="cpu", weights_only=True)
    return state, tensors, rng


def _restore_rng(state: dict, rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy_rng"]
    np.random.set_state(
        ("MT19937", rng["numpy"].numpy(), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    v, internal, gauss = state["python_rng"]
    random.setstate((v, tuple(internal), gauss))


# -- the loop ---------------------------------------------------------------------------


def _sample_grid(
    ckpt_cfg: CheckpointConfig, ema_model: UNet, ema: EMA, count: int, out: Path
) -> bytes:
    """PNG grid of ``count`` samples of the EMA weights (seed 0; labels 0, 1, 2, ... when
    conditional, one class per column)."""
    ema.copy_to(ema_model)
    ema_model.eval()
    ck = Checkpoint(out, ckpt_cfg, {}, ema_model, "ema")
    labels, nrow = None, None
    if ckpt_cfg.num_classes:
        labels = [i % ckpt_cfg.num_classes for i in range(count)]
        nrow = ckpt_cfg.num_classes if count >= ckpt_cfg.num_classes else None
    images = generate(ck, count=count, seed=0, labels=labels)
    return png_bytes(make_grid(images, nrow=nrow))


def train(
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    command: str | None = None,
    job_id: str | None = None,
    dataset: ImageDataset | None = None,
) -> TrainResult:
    """Train as ``cfg`` says and save a checkpoint directory at ``cfg.out``.

    ``progress(TrainProgress)`` runs after every step; a truthy return, like a
    truthy ``should_stop()``, ends training after that step, and the state is
    still saved. ``command``/``job_id`` are recorded in meta.json as provenance.
    ``dataset`` replaces loading ``cfg.dataset`` (e.g. a dataset already in memory).

    ``cfg.out`` is (re)written on every save, model + EMA + meta + samples.png,
    with the resumable state in ``cfg.out/train_state/``; an existing directory
    there is replaced. Previews of ``sample_every`` go to ``<out>.samples/``.
    Raises ValueError for unusable settings (e.g. fp16 without CUDA),
    :class:`~ddpm_core.data.DatasetError` (a ValueError) for unusable data, and
    :class:`TrainingDiverged` when the weights (raw or EMA) become non-finite or the
    loss stays non-finite for more than ``MAX_NONFINITE_STEPS`` steps in a row; weights
    with a NaN or an infinity are never saved. meta.json names the dataset and the
    directories, never their absolute paths.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this with the same ``cfg``:
    each computes its share of every global batch, and rank 0 alone calls ``progress``,
    keeps the EMA and writes checkpoints and previews (see :mod:`ddpm_core.distributed`).
    ``should_stop`` is asked on every rank; a stop on any of them stops all.
    """
    # Data parallel under torchrun (see ddpm_core.distributed); one process otherwise.
    dist_ctx = setup_distributed(cfg.device)
    device = dist_ctx.device
    if dist_ctx.world > cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} is smaller than {dist_ctx.world} processes")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs a CUDA device; use bf16 or no on CPU")
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this CUDA device does not support bf16")
    out = Path(cfg.out)

    resume = None
    if cfg.resume_from:
        # Rank 0 reads the state and sends it: other hosts need no copy of the files.
        resume = dist_ctx.tensors_from_main(lambda: _load_state(Path(cfg.resume_from)))

    ds = dataset
    if ds is None:
        ds = load_dataset(
            cfg.dataset, cfg.image_size, cfg.channels, cfg.class_cond, cfg.random_flip
        )
    if ds.image_size != cfg.image_size or ds.channels != cfg.channels:
        raise ValueError(
            f"dataset images are {ds.channels}x{ds.image_size}px, config says "
            f"{cfg.channels}x{cfg.image_size}px"
        )
    num_classes = ds.num_classes if cfg.class_cond else None
    if cfg.class_cond and not num_classes:
        raise ValueError("class-conditional training needs a labeled dataset")

    schedule = (
        NoiseSchedule.linear(cfg.timesteps)
        if cfg.schedule == "linear"
        else NoiseSchedule.cosine(cfg.timesteps)
    )
    unet_cfg = build_unet_config(cfg, num_classes)
    ckpt_cfg = CheckpointConfig(
        unet=unet_cfg,
        schedule=schedule.to_config(),
        variance_type="fixed_small",
        prediction_type=cfg.prediction_type,
        default_steps=cfg.default_steps,
        default_sampler=cfg.default_sampler,
        default_eta=cfg.default_eta,
        default_guidance_scale=cfg.guidance_scale if num_classes else 1.0,
        class_names=ds.class_names if num_classes else None,
    )

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    model = UNet(unet_cfg).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    ema_model = UNet(unet_cfg).to(device)  # holds the EMA weights for previews
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None

    start_step, smooth, smooth_w, skipped, prev_elapsed = 0, 0.0, 0.0, 0, 0.0
    if resume is not None:
        state, tensors, rng = resume
        model.load_state_dict(tensors["model"])
        opt.load_state_dict(tensors["optimizer"])
        ema.load_state_dict(tensors["ema"], state["ema"])
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        start_step = int(state["step"])
        smooth, smooth_w = state["smooth_loss"], state["smooth_weight"]
        skipped, prev_elapsed = state["skipped_steps"], state.get("elapsed_s", 0.0)
        _restore_rng(state, rng)
        if start_step > cfg.steps:
            raise ValueError(f"resume state is at step {start_step}, past steps={cfg.steps}")
    dist_ctx.seed_dropout(cfg.seed, start_step)
    ema.to(device)
    net = torch.compile(dist_ctx.wrap(model)) if cfg.compile else dist_ctx.wrap(model)

    def check_weights(step: int, with_ema: bool = False) -> None:
        """TrainingDiverged when the raw (or EMA) weights hold a NaN or an infinity."""
        for which, tensors in (("weights", dict(model.named_parameters())), ("EMA", ema.shadow)):
            if which == "EMA" and not with_ema:
                continue
            bad = non_finite_tensors(tensors)
            if bad:
                raise TrainingDiverged(
                    f"training diverged: the {which} became non-finite by step {step} "
                    f"(e.g. {bad[:3]}); nothing more is saved. Check lr, weight_decay, grad_clip."
                )

    check_weights(start_step, with_ema=True)

    def save(step: int, loss: float) -> Path:
        if not dist_ctx.is_main:  # rank 0 alone writes checkpoints and state
            return out
        check_weights(step, with_ema=True)  # never write non-finite weights
        elapsed = prev_elapsed + time.perf_counter() - started
        png = _sample_grid(ckpt_cfg, ema_model, ema, cfg.sample_count, out)
        # Served as it is (GET /checkpoints): names, never the server's paths.
        meta = {
            "dataset": ds.describe() | {"name": _public_name(ds.name)},
            "training_steps": step,
            "total_steps": cfg.steps,
            "images_seen": step * cfg.batch_size * cfg.accumulate,
            "loss": loss,
            "skipped_steps": skipped,
            "train_config": public_train_config(cfg),
            "command": scrub_paths(command),
            "job_id": job_id,
            "device": str(device)
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "training_time_s": round(elapsed, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        scalars = {
            "smooth_loss": smooth,
            "smooth_weight": smooth_w,
            "skipped_steps": skipped,
            "elapsed_s": elapsed,
        }

        meta.update(dist_ctx.meta())

        def state(tmp_dir: Path) -> None:
            _save_state(tmp_dir, cfg, step, model, opt, ema, scaler, scalars)

        save_checkpoint(
            out, ckpt_cfg, model, ema.state_dict(), meta, png, overwrite=True, extra=state
        )
        return out

    per_step = cfg.batch_size * cfg.accumulate
    null = model.null_label
    model.train()
    started = time.perf_counter()
    window_t, window_n = started, 0
    losses: list[float] = []
    stopped = False
    step = start_step
    last_saved = -1
    nonfinite_run = 0  # consecutive steps whose loss was not finite
    while step < cfg.steps:
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        # One generator per (seed, step): batch flips, t, eps and label dropout.
        g = torch.Generator().manual_seed(cfg.seed * _MIX + step + 1)
        idx = batch_indices(cfg.seed, step, per_step, len(ds))
        x0_all, y_all = ds.batch(idx, g)
        t_all = torch.randint(0, cfg.timesteps, (per_step,), generator=g)
        noise_all = torch.randn(x0_all.shape, generator=g)
        drop = torch.rand(per_step, generator=g) < cfg.p_uncond
        opt.zero_grad(set_to_none=True)
        step_loss, finite, loss_finite = 0.0, True, True
        for m in range(cfg.accumulate):
            dist_ctx.sync_grads(net, m == cfg.accumulate - 1)
            sl = dist_ctx.shard(m * cfg.batch_size, cfg.batch_size)  # this rank's rows
            x0 = x0_all[sl].to(device, non_blocking=True).contiguous(memory_format=memory_format)
            noise = noise_all[sl].to(device).contiguous(memory_format=memory_format)
            t = t_all[sl].to(device)
            labels = None
            if num_classes:
                # Classifier-free guidance training: drop the label to the null class w.p. p_uncond.
                labels = torch.where(drop[sl], torch.full_like(y_all[sl], null), y_all[sl])
                labels = labels.to(device)
            x_t = q_sample(schedule, x0, t, noise)
            target = training_target(cfg.prediction_type, schedule, x0, t, noise)
            with _autocast(device, cfg.precision):
                prediction = net(x_t, t, labels)
            loss = diffusion_loss(prediction, target, cfg.loss) / cfg.accumulate
            lv = float(loss.detach())
            if not math.isfinite(lv):
                finite = loss_finite = False
                if not dist_ctx.active:  # ranks must all run the same collectives
                    break
            step_loss += lv
            loss = loss * dist_ctx.grad_weight(cfg.batch_size)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if dist_ctx.active:  # every rank decides from the loss of the whole global batch
            step_loss = dist_ctx.global_loss(step_loss, cfg.batch_size)
            finite = loss_finite = math.isfinite(step_loss)
        if finite:
            if scaler is not None:
                scaler.unscale_(opt)
            if cfg.grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            else:
                norm = torch.stack(
                    [p.grad.norm() for p in model.parameters() if p.grad is not None]
                ).norm()
            if scaler is not None:
                # GradScaler skips the update itself when the gradients overflowed.
                scale_before = scaler.get_scale()
                scaler.step(opt)
                scaler.update()
                if scaler.get_scale() < scale_before:
                    finite = False
            elif torch.isfinite(norm):
                opt.step()
            else:
                finite = False
        if finite:
            check_weights(step + 1)  # e.g. an infinite weight decay: stop before the EMA

            if dist_ctx.is_main:
                ema.update(model)
            # Bias-corrected exponential smoothing of the loss (as Adam's moments).
            smooth = 0.98 * smooth + 0.02 * step_loss
            smooth_w = 0.98 * smooth_w + 0.02
            losses.append(step_loss)
        else:
            skipped += 1
            opt.zero_grad(set_to_none=True)
            losses.append(float("nan"))
        nonfinite_run = 0 if loss_finite else nonfinite_run + 1
        if nonfinite_run > MAX_NONFINITE_STEPS:
            raise TrainingDiverged(
                f"training diverged: the loss was not finite for {nonfinite_run} consecutive "
                f"steps (up to step {step + 1}); nothing more is saved. Check data, lr, precision."
            )
        step += 1
        window_n += per_step
        now = time.perf_counter()
        ips = window_n / max(now - window_t, 1e-9)
        if now - window_t > 5.0:
            window_t, window_n = now, 0
        smoothed = smooth / smooth_w if smooth_w else float("nan")

        info = TrainProgress(
            step=step,
            total_steps=cfg.steps,
            loss=smoothed,
            loss_raw=losses[-1],
            lr=lr,
            images_per_sec=ips,
            skipped_steps=skipped,
            elapsed_s=prev_elapsed + now - started,
        )
        if (
            dist_ctx.is_main
            and cfg.sample_every
            and step % cfg.sample_every == 0
            and step < cfg.steps
        ):
            png = _sample_grid(ckpt_cfg, ema_model, ema, cfg.sample_count, out)
            # Previews go next to the checkpoint: its directory is replaced on every save.
            path = out.parent / f"{out.name}.samples" / f"step{step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
            info.sample_path, info.sample_png = str(path), png
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            info.checkpoint_path = str(save(step, smoothed))
            last_saved = step
        if dist_ctx.is_main and progress is not None and progress(info):
            stopped = True
        if should_stop is not None and should_stop():
            stopped = True
        if dist_ctx.any(stopped):  # a stop on any rank stops them all after this step
            stopped = True
            break

    final_loss = smooth / smooth_w if smooth_w else float("nan")
    if last_saved != step:
        save(step, final_loss)
    dist_ctx.barrier()  # the checkpoint exists when any rank returns
    dist_ctx.close()
    return TrainResult(
        checkpoint=out,
        step=step,
        total_steps=cfg.steps,
        final_loss=final_loss,
        losses=losses,
        skipped_steps=skipped,
        stopped=stopped,
        elapsed_s=prev_elapsed + time.perf_counter() - started,
        device=str(device),
    )


def command_line() -> str:
    """The running process's command line, for provenance."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""
