"""Every option of a training run, declared once: :class:`TrainConfig`.

Each field declares its type and default and, in its :class:`~ddpm_core.config.options.Option`,
what the library accepts, what ``POST /train`` shows and accepts (``app.core.jobs.spec``
builds ``TrainOptions`` from it) and the ``ddpm train`` flag that sets it (``app.cli.train``
builds the flags from it). Plain Python: the API imports it without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ddpm_core.config.checks import is_int
from ddpm_core.config.names import (
    CHANNEL_COUNTS,
    LOSSES,
    LR_SCHEDULES,
    MEASURE_SETTINGS,
    NAME_PATTERN,
    PRECISIONS,
    PREDICTION_TYPES,
    PRESET_NAMES,
    SAMPLERS,
    SCHEDULE_KINDS,
)
from ddpm_core.config.options import Flag, Limits, check_options, option
from ddpm_core.config.unet import UNetConfig, overrides_schema, training_unet_config

__all__ = [
    "TrainConfig",
    "MAX_TRAIN_STEPS",
    "PREDICTION_FLAG_NAMES",
    "build_unet_config",
    "public_train_config",
]

# Requests may ask for at most this many steps (and warm-up, save and preview intervals).
MAX_TRAIN_STEPS = 10_000_000
# --prediction's names: the prediction types and their short names.
PREDICTION_FLAG_NAMES = {"epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction"}
PREDICTION_FLAG_NAMES |= {"v_prediction": "v_prediction", "sample": "sample", "x0": "sample"}


def _steps(lo: int) -> Limits:
    return Limits(ge=lo, le=MAX_TRAIN_STEPS)


@dataclass
class TrainConfig:
    """Everything that defines a training run (JSON-serialisable via ``to_dict``).

    Every field is checked on construction against its declaration (ValueError
    ``invalid TrainConfig: ...`` listing each problem); ``out``, ``device`` and
    ``resume_from`` belong to whoever runs the training, not to a request.
    """

    dataset: str = option(
        "digits",
        description='"digits" (built in) or the name of an image folder under DATA_DIR/datasets',
        request_limits=Limits(pattern=NAME_PATTERN),
        cli=Flag(("--dataset",), help="'digits' (built-in) or an image folder (PNG/JPEG/WebP)"),
    )
    out: str = option(
        "runs/digits",
        request=False,
        cli=Flag(("--out",), help="checkpoint directory to write (required)"),
    )
    # -- the model
    preset: str = option(
        "tiny",
        choices=PRESET_NAMES,
        cli=Flag(
            ("--preset",), help="UNet preset: tiny (default), small, ddpm-cifar10", choices=False
        ),
    )
    image_size: int = option(
        16,
        request_limits=Limits(ge=8, le=512),
        cli=Flag(("--image-size",), help="default 16 for digits, else 32"),
    )
    channels: int = option(
        1,
        choices=CHANNEL_COUNTS,
        cli=Flag(("--channels",), help="1 or 3 (default 1 for digits, else 3)", choices=False),
    )
    unet_overrides: dict = option(
        default_factory=dict,
        description="UNetConfig fields that replace the preset's (ddpm_core.config.unet)",
        schema=overrides_schema(),
        cli=Flag(
            ("--unet",),
            help="override a UNetConfig field, VALUE as JSON (e.g. channel_mult=[1,2,2])",
            metavar="KEY=VALUE",
            custom=True,  # repeated, one field each
        ),
    )
    # digits: its labels; an image folder: labels from its sub-folders
    class_cond: bool = option(
        False,
        cli=Flag(
            ("--class-cond", "--labels-from-folders"),
            help="class-conditional (digits labels, or a folder's sub-folder names)",
        ),
    )
    p_uncond: float = option(  # label dropout for classifier-free guidance
        0.1,
        ge=0.0,
        lt=1.0,
        cli=Flag(("--p-uncond",), help="label dropout for guidance (default 0.1)"),
    )
    random_flip: bool = option(False, cli=Flag(("--random-flip",)))
    # -- the diffusion
    schedule: str = option("linear", choices=SCHEDULE_KINDS, cli=Flag(("--schedule",)))
    timesteps: int = option(
        1000,
        request_limits=Limits(ge=2, le=10000),
        cli=Flag(("--timesteps",), help="T of the forward process (default 1000)"),
    )
    loss: str = option("mse", choices=LOSSES, cli=Flag(("--loss",)))
    prediction_type: str = option(
        "epsilon",
        choices=PREDICTION_TYPES,
        description="what the network learns to predict: the noise, v, or x0",
        cli=Flag(
            ("--prediction",),
            help="what the network predicts: epsilon (default), v (v_prediction) or sample (x0)",
            choices=PREDICTION_FLAG_NAMES,
        ),
    )
    # -- the optimisation
    steps: int = option(
        1000,
        ge=1,
        request_limits=_steps(1),
        cli=Flag(("--steps",), help="optimizer steps (default 1000)"),
    )
    batch_size: int = option(
        64,
        ge=1,
        request_limits=Limits(ge=1, le=65536),
        cli=Flag(("--batch-size",), help="images per micro-batch (default 64)"),
    )
    accumulate: int = option(
        1,
        ge=1,
        request_limits=Limits(ge=1, le=1024),
        cli=Flag(("--accumulate",), help="micro-batches per optimizer step"),
    )
    lr: float = option(
        2e-4,
        gt=0.0,
        request_limits=Limits(gt=0.0, le=1.0),
        cli=Flag(("--lr",), help="peak learning rate (default 2e-4)"),
    )
    weight_decay: float = option(
        0.0, ge=0.0, request_limits=Limits(ge=0.0, le=1.0), cli=Flag(("--weight-decay",))
    )
    adam_betas: tuple[float, float] = option((0.9, 0.999), ge=0.0, lt=1.0, cli=None)
    warmup: int = option(
        100,
        ge=0,
        request_limits=_steps(0),
        cli=Flag(("--warmup",), help="linear warm-up steps (default 100)"),
    )
    lr_schedule: str = option("cosine", choices=LR_SCHEDULES, cli=Flag(("--lr-schedule",)))
    min_lr_ratio: float = option(  # the cosine's floor, as a fraction of lr
        0.0, request_limits=Limits(ge=0.0, le=1.0), cli=None
    )
    grad_clip: float | None = option(
        1.0,
        gt=0.0,
        request_limits=Limits(gt=0.0, le=1e6),
        cli=Flag(("--grad-clip",), help="max gradient norm; 0 disables (default 1)", none_at=0.0),
    )
    ema_decay: float = option(
        0.999, ge=0.0, lt=1.0, cli=Flag(("--ema-decay",), help="default 0.999")
    )
    ema_warmup: bool = option(True, cli=None)
    precision: str = option("no", choices=PRECISIONS, cli=Flag(("--precision",)))
    # -- saving and previews
    save_every: int = option(
        0,
        ge=0,
        request_limits=_steps(0),
        cli=Flag(("--save-every",), help="checkpoint every N steps (0: at the end)"),
    )
    sample_every: int = option(
        0,
        ge=0,
        request_limits=_steps(0),
        cli=Flag(("--sample-every",), help="preview grid every N steps (0: never)"),
    )
    sample_count: int = option(
        16, request_limits=Limits(ge=1, le=256), cli=Flag(("--sample-count",))
    )
    # the checkpoint's sampling defaults; default_steps in [1, timesteps] (checked below)
    default_steps: int = option(
        50,
        description="1..timesteps",
        request_limits=Limits(ge=1, le=10000),
        cli=Flag(("--default-steps",), help="checkpoint's default sampling steps (50)"),
    )
    default_sampler: str = option(
        "ddim", choices=SAMPLERS, cli=Flag(("--default-sampler",), help="default: ddim")
    )
    default_eta: float = option(
        0.0,
        ge=0.0,
        le=1.0,
        cli=Flag(("--default-eta",), help="checkpoint's default DDIM eta (0)"),
    )
    guidance_scale: float = option(  # the default of conditional checkpoints
        1.0,
        request_limits=Limits(ge=0.0, le=100.0),
        cli=Flag(("--guidance-scale",), help="checkpoint's default guidance (1)"),
    )
    # the measured defaults (ddpm_core.measured_defaults): replace the three above
    measure_defaults: str = option(
        "fast",
        choices=MEASURE_SETTINGS,
        description="after training, measure samplers x steps (x guidance) on the weights and "
        "write the cheapest good one as the defaults: off, fast, or fid (also FID; slow on a CPU)",
        cli=Flag(
            ("--measure-defaults",),
            help="after training, choose the sampling defaults by measurement: off, fast "
            "(default) or fid",
        ),
    )
    measure_images: int = option(
        32,
        ge=2,
        request_limits=Limits(ge=2, le=256),
        cli=Flag(("--measure-images",), help="images per measured setting (default 32)"),
    )
    # -- the execution
    device: str = option(
        "auto", request=False, cli=Flag(("--device",), help="auto (default), cpu, cuda or cuda:N")
    )
    compile: bool = option(False, cli=Flag(("--compile",), help="torch.compile the UNet"))
    channels_last: bool = option(False, cli=Flag(("--channels-last",)))
    seed: int = option(0, ge=0, request_limits=Limits(ge=0, le=2**63 - 1), cli=Flag(("--seed",)))
    resume_from: str | None = option(
        None,
        request=False,
        cli=Flag(
            ("--resume",),
            help="continue a run (from CHECKPOINT, or from --out when omitted)",
            metavar="CHECKPOINT",
            custom=True,  # its value is optional
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.adam_betas, list | tuple):  # JSON gives a list
            self.adam_betas = tuple(
                float(b) if isinstance(b, int | float) and not isinstance(b, bool) else b
                for b in self.adam_betas
            )
        problems = check_options(self)
        both = is_int(self.default_steps) and is_int(self.timesteps)
        if both and not 1 <= self.default_steps <= self.timesteps:
            problems.append("default_steps must be in [1, timesteps]")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """The config as JSON values (``adam_betas`` a list)."""
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config of ``d`` (e.g. ``to_dict``'s); ValueError for unknown or bad fields."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)


def build_unet_config(cfg: TrainConfig, num_classes: int | None) -> UNetConfig:
    """The run's network (ConfigError, a ValueError, names a bad ``unet_overrides`` field)."""
    return training_unet_config(
        cfg.preset, cfg.image_size, cfg.channels, num_classes, cfg.unet_overrides
    )


def public_name(path: str | None) -> str | None:
    """A dataset or directory by name: the last component of a path, never the path."""
    return None if path is None else (Path(path).name or str(path))


def public_train_config(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as meta.json records it: datasets and directories by name, not by path."""
    d = cfg.to_dict()
    for key in ("dataset", "out", "resume_from"):
        d[key] = public_name(d[key])
    return d
