"""The UNet's hyper-parameters, their validation, its presets and its layout, without torch.

Everything here is plain Python so that the API (which never imports torch) can check a
checkpoint's config or a training request. :mod:`ddpm_core.unet` builds the network from
the same :func:`unet_layout`, so the closed-form sizes of :mod:`ddpm_core.config.size`
describe exactly the modules it creates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ddpm_core.config.checks import (
    BOOL_RULE,
    ConfigError,
    FieldRule,
    float_rule,
    int_rule,
    list_rule,
)

__all__ = [
    "UNetConfig",
    "UNET_FIELDS",
    "TRAINING_SET_FIELDS",
    "PRESETS",
    "preset",
    "training_unet_config",
    "check_unet_field",
    "overrides_schema",
    "StagePlan",
    "UNetLayout",
    "unet_layout",
]

MAX_SIZE = 8192  # pixels per side, channels per layer: far beyond any DDPM, yet finite

# Hard ranges per field; the model's overall size is bounded by check_model_size.
UNET_FIELDS: dict[str, FieldRule] = {
    "image_size": int_rule(1, MAX_SIZE),
    "in_channels": int_rule(1, 64),
    "out_channels": int_rule(1, 64),
    "base_channels": int_rule(1, MAX_SIZE),
    "channel_mult": list_rule(1, 64, 1, 16),
    "num_res_blocks": int_rule(1, 64),
    "attention_resolutions": list_rule(1, MAX_SIZE, 0, 16),
    "up_attention_resolutions": list_rule(1, MAX_SIZE, 0, 16, nullable=True),
    "mid_attention": BOOL_RULE,
    "attention_head_dim": int_rule(1, MAX_SIZE * 64, nullable=True),
    "dropout": float_rule(0.0, 1.0, hi_open=True),
    "norm_groups": int_rule(1, 1024),
    "norm_eps": float_rule(0.0, 1.0, lo_open=True),
    "num_classes": int_rule(1, 1_000_000, nullable=True),
    "flip_sin_to_cos": BOOL_RULE,
    "freq_shift": float_rule(0.0, 1.0),
    "downsample_padding": int_rule(0, 1),
}

# Set by a training run from its own options (image size, channels, dataset labels),
# so a run's ``unet_overrides`` may not change them.
TRAINING_SET_FIELDS = ("image_size", "in_channels", "out_channels", "num_classes")


def check_unet_field(name: str, value: Any) -> Any:
    """``value`` of UNetConfig field ``name``, type- and range-checked (ConfigError)."""
    if name not in UNET_FIELDS:
        raise ConfigError(name, "is not a UNetConfig field")
    return UNET_FIELDS[name](name, value)


def overrides_schema() -> dict[str, Any]:
    """The JSON schema of a training run's ``unet_overrides``: every UNetConfig field but
    those the run's own options set (:data:`TRAINING_SET_FIELDS`)."""
    return {
        "type": "object",
        "properties": {k: r.schema for k, r in UNET_FIELDS.items() if k not in TRAINING_SET_FIELDS},
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`~ddpm_core.unet.UNet` (JSON-serialisable via ``to_dict``).

    Every field is type- and range-checked on construction (:class:`ConfigError`,
    a ValueError naming the field), as are the constraints between fields.
    """

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    # Resolutions with attention on the up path; None mirrors the down path.
    up_attention_resolutions: tuple[int, ...] | None = None
    mid_attention: bool = True
    attention_head_dim: int | None = None  # None: one head spanning all channels
    dropout: float = 0.1
    norm_groups: int = 32
    norm_eps: float = 1e-6
    num_classes: int | None = None
    # Time embedding of the original TF code: [sin, cos], frequencies over half-1.
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0
    # 0: pad right/bottom by one then a stride-2 valid conv (original DDPM); 1: symmetric.
    downsample_padding: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name, rule in UNET_FIELDS.items():
            object.__setattr__(self, name, rule(name, getattr(self, name)))
        levels = len(self.channel_mult) - 1
        if self.image_size % 2**levels:
            raise ConfigError(
                "image_size",
                f"must be divisible by 2^{levels} = {2**levels} (one halving per "
                f"channel_mult entry after the first), got {self.image_size}",
            )
        widths = sorted({self.base_channels} | {self.base_channels * m for m in self.channel_mult})
        bad = [c for c in widths if c % self.norm_groups]
        if bad:
            raise ConfigError(
                "norm_groups",
                f"must divide every layer's channel count {widths}, got {self.norm_groups}",
            )
        if self.attention_head_dim is not None:
            plan = unet_layout(self)
            bad = [c for c in plan.attention_widths() if c % self.attention_head_dim]
            if bad:
                raise ConfigError(
                    "attention_head_dim",
                    f"must divide the channel count of every attention layer {bad}, "
                    f"got {self.attention_head_dim}",
                )
        if self.base_channels // 2 - self.freq_shift <= 0:
            raise ConfigError(
                "freq_shift",
                f"must be below base_channels // 2 = {self.base_channels // 2}, "
                f"got {self.freq_shift}",
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        if self.up_attention_resolutions is not None:
            d["up_attention_resolutions"] = list(self.up_attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> UNetConfig:
        """Parse a ``unet`` config section; ConfigError names the offending field."""
        if not isinstance(d, dict):
            raise ConfigError("unet", f"must be an object, got {d!r}")
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise ConfigError(unknown[0], f"is not a UNetConfig field (unknown: {unknown})")
        return cls(**d)


# Overrides of UNetConfig's defaults per preset; names.PRESET_NAMES lists them (a test
# keeps the two equal).
PRESETS: dict[str, dict] = {
    # Ho et al. 2020, CIFAR-10: ch 128, mult (1,2,2,2), 2 res blocks, attention at 16x16.
    "ddpm-cifar10": {},
    # CPU-sized models for tests and the built-in checkpoint.
    "tiny": {
        "base_channels": 32,
        "channel_mult": (1, 2),
        "num_res_blocks": 1,
        "attention_resolutions": (),
        "mid_attention": True,
        "norm_groups": 8,
        "dropout": 0.0,
    },
    "small": {
        "base_channels": 64,
        "channel_mult": (1, 2, 2),
        "num_res_blocks": 2,
        "attention_resolutions": (8,),
        "norm_groups": 16,
        "dropout": 0.1,
    },
}


def preset(name: str, **overrides: object) -> UNetConfig:
    """A named :class:`UNetConfig` (``ddpm-cifar10``, ``small``, ``tiny``) with overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown UNet preset {name!r} (choose from {sorted(PRESETS)})")
    unknown = sorted(set(overrides) - set(UNET_FIELDS))
    if unknown:
        raise ConfigError(unknown[0], f"is not a UNetConfig field (unknown: {unknown})")
    return UNetConfig(**(PRESETS[name] | overrides))


def training_unet_config(
    preset_name: str,
    image_size: int,
    channels: int,
    num_classes: int | None,
    overrides: dict[str, Any] | None = None,
) -> UNetConfig:
    """The network of a training run: a preset at the run's image size, channels and
    classes, with ``overrides`` of the other UNetConfig fields (ConfigError naming
    ``unet_overrides.<field>`` when one is unknown, reserved or out of range)."""
    overrides = dict(overrides or {})
    for key in sorted(overrides, key=str):
        if key in TRAINING_SET_FIELDS:
            raise ConfigError(
                f"unet_overrides.{key}",
                "is set by the run's image_size, channels and class_cond options",
            )
        try:
            overrides[key] = check_unet_field(str(key), overrides[key])
        except ConfigError as exc:
            raise exc.within("unet_overrides") from None
    base = {
        "image_size": image_size,
        "in_channels": channels,
        "out_channels": channels,
        "num_classes": num_classes,
    }
    try:
        return preset(preset_name, **(base | overrides))
    except ConfigError as exc:
        # A cross-field constraint: blame the override if one is involved.
        raise (exc.within("unet_overrides") if exc.field in overrides else exc) from None


# -- the network's structure ------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    """One resolution of the UNet: its residual blocks (in, out channels), whether each
    block is followed by attention, and whether a down/up-sampler ends the stage."""

    resolution: int
    blocks: tuple[tuple[int, int], ...]
    attention: bool
    resample: bool


@dataclass(frozen=True)
class UNetLayout:
    """Every layer of the UNet, as :class:`~ddpm_core.unet.UNet` builds them."""

    temb: int
    down: tuple[StagePlan, ...]
    mid_channels: int
    mid_resolution: int
    up: tuple[StagePlan, ...]
    mid_attention: bool
    head_dim: int | None  # None: one head spanning all channels

    def heads(self, channels: int) -> int:
        return channels // self.head_dim if self.head_dim else 1

    def attention_widths(self) -> list[int]:
        """The channel count of every attention layer."""
        widths = [co for s in self.down + self.up if s.attention for _, co in s.blocks]
        return widths + ([self.mid_channels] if self.mid_attention else [])


def unet_layout(cfg: UNetConfig) -> UNetLayout:
    """The stages of the UNet ``cfg`` describes (Ho et al. 2020, Appendix B layout)."""
    ch0 = cfg.base_channels
    skips = [ch0]
    ch, res = ch0, cfg.image_size
    down = []
    for level, mult in enumerate(cfg.channel_mult):
        cout = ch0 * mult
        blocks = []
        for _ in range(cfg.num_res_blocks):
            blocks.append((ch, cout))
            ch = cout
            skips.append(ch)
        last = level == len(cfg.channel_mult) - 1
        if not last:
            skips.append(ch)
        down.append(StagePlan(res, tuple(blocks), res in cfg.attention_resolutions, not last))
        res = res if last else res // 2
    mid_ch, mid_res = ch, res
    up_attn = cfg.up_attention_resolutions
    up_attn = cfg.attention_resolutions if up_attn is None else up_attn
    up = []
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        cout = ch0 * mult
        blocks = []
        for _ in range(cfg.num_res_blocks + 1):
            blocks.append((ch + skips.pop(), cout))
            ch = cout
        up.append(StagePlan(res, tuple(blocks), res in up_attn, level > 0))
        res = res * 2 if level > 0 else res
    return UNetLayout(
        temb=4 * ch0,
        down=tuple(down),
        mid_channels=mid_ch,
        mid_resolution=mid_res,
        up=tuple(up),
        mid_attention=cfg.mid_attention,
        head_dim=cfg.attention_head_dim,
    )
