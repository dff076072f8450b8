"""The UNet's hyper-parameters, their validation and the model's size, without torch.

Everything here is plain Python so that the API (which never imports torch) can
check a checkpoint's config or a training request, and bound the model's
parameter count and activation memory before anything is allocated.
:mod:`ddpm_core.unet` builds the network from the same :func:`unet_layout`, so
the closed-form sizes below describe exactly the modules it creates.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "ConfigError",
    "UNetConfig",
    "UNET_FIELDS",
    "TRAINING_SET_FIELDS",
    "PRESETS",
    "preset",
    "training_unet_config",
    "check_unet_field",
    "StagePlan",
    "UNetLayout",
    "unet_layout",
    "parameter_count",
    "activation_bytes",
    "ModelTooLarge",
    "check_model_size",
    "DEFAULT_MAX_PARAMS",
    "DEFAULT_MAX_ACTIVATION_BYTES",
]

# The service's defaults (app.core.settings mirrors them): the DDPM CIFAR-10 UNet has 35.7 M
# parameters and about 0.2 GiB of activations per 32x32 image; 256x256 DDPM models ~114 M.
DEFAULT_MAX_PARAMS = 200_000_000
DEFAULT_MAX_ACTIVATION_BYTES = 8 * 2**30
FLOAT_BYTES = 4  # estimates are for float32 activations


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; ``field`` names it (dotted)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem

    def within(self, prefix: str) -> ConfigError:
        """The same error with ``prefix.`` in front of the field name."""
        return type(self)(f"{prefix}.{self.field}", self.problem)


# -- typed field checks (shared by every config of ours) --------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_int(name: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``v`` as an int in [lo, hi]; bools, floats and strings are refused."""
    if not _is_int(v):
        raise ConfigError(name, f"must be an integer, got {v!r}")
    v = int(v)
    if lo is not None and v < lo:
        raise ConfigError(name, f"must be at least {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(name, f"must be at most {hi}, got {v}")
    return v


def check_float(
    name: str,
    v: Any,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``v`` as a finite float within the bounds (open where asked); ints are accepted."""
    if not _is_real(v):
        raise ConfigError(name, f"must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ConfigError(name, f"must be finite, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ConfigError(name, f"must be {'above' if lo_open else 'at least'} {lo}, got {v}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ConfigError(name, f"must be {'below' if hi_open else 'at most'} {hi}, got {v}")
    return v


def check_bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(name, f"must be true or false, got {v!r}")
    return v


def check_choice(name: str, v: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ConfigError(name, f"must be one of {list(choices)}, got {v!r}")
    return v


def check_int_list(
    name: str, v: Any, lo: int, hi: int, min_len: int = 0, max_len: int = 64
) -> tuple[int, ...]:
    """A list (or tuple) of ints in [lo, hi] with min_len..max_len entries, as a tuple."""
    if not isinstance(v, list | tuple):
        raise ConfigError(name, f"must be a list of integers, got {v!r}")
    if not min_len <= len(v) <= max_len:
        raise ConfigError(name, f"must have {min_len} to {max_len} entries, got {len(v)}")
    return tuple(check_int(f"{name}[{i}]", x, lo, hi) for i, x in enumerate(v))


# -- the UNet's fields ------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRule:
    """How one UNetConfig field is checked, and its JSON schema (for the API's docs)."""

    check: Callable[[str, Any], Any]
    schema: dict[str, Any]
    nullable: bool = False

    def __call__(self, name: str, v: Any) -> Any:
        if v is None and self.nullable:
            return None
        return self.check(name, v)


def _int_rule(lo: int, hi: int, nullable: bool = False) -> FieldRule:
    schema: dict[str, Any] = {"type": "integer", "minimum": lo, "maximum": hi}
    if nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return FieldRule(lambda n, v: check_int(n, v, lo, hi), schema, nullable)


def _float_rule(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> FieldRule:
    schema: dict[str, Any] = {"type": "number"}
    schema["exclusiveMinimum" if lo_open else "minimum"] = lo
    schema["exclusiveMaximum" if hi_open else "maximum"] = hi
    return FieldRule(lambda n, v: check_float(n, v, lo, hi, lo_open, hi_open), schema)


def _list_rule(lo: int, hi: int, min_len: int, max_len: int, nullable: bool = False) -> FieldRule:
    schema: dict[str, Any] = {
        "type": "array",
        "items": {"type": "integer", "minimum": lo, "maximum": hi},
        "minItems": min_len,
        "maxItems": max_len,
    }
    if nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return FieldRule(lambda n, v: check_int_list(n, v, lo, hi, min_len, max_len), schema, nullable)


_BOOL = FieldRule(check_bool, {"type": "boolean"})
MAX_SIZE = 8192  # pixels per side, channels per layer: far beyond any DDPM, yet finite

# Hard ranges per field; the model's overall size is bounded by check_model_size.
UNET_FIELDS: dict[str, FieldRule] = {
    "image_size": _int_rule(1, MAX_SIZE),
    "in_channels": _int_rule(1, 64),
    "out_channels": _int_rule(1, 64),
    "base_channels": _int_rule(1, MAX_SIZE),
    "channel_mult": _list_rule(1, 64, 1, 16),
    "num_res_blocks": _int_rule(1, 64),
    "attention_resolutions": _list_rule(1, MAX_SIZE, 0, 16),
    "up_attention_resolutions": _list_rule(1, MAX_SIZE, 0, 16, nullable=True),
    "mid_attention": _BOOL,
    "attention_head_dim": _int_rule(1, MAX_SIZE * 64, nullable=True),
    "dropout": _float_rule(0.0, 1.0, hi_open=True),
    "norm_groups": _int_rule(1, 1024),
    "norm_eps": _float_rule(0.0, 1.0, lo_open=True),
    "num_classes": _int_rule(1, 1_000_000, nullable=True),
    "flip_sin_to_cos": _BOOL,
    "freq_shift": _float_rule(0.0, 1.0),
    "downsample_padding": _int_rule(0, 1),
}

# Set by a training run from its own options (image size, channels, dataset labels),
# so a run's ``unet_overrides`` may not change them.
TRAINING_SET_FIELDS = ("image_size", "in_channels", "out_channels", "num_classes")


def check_unet_field(name: str, value: Any) -> Any:
    """``value`` of UNetConfig field ``name``, type- and range-checked (ConfigError)."""
    if name not in UNET_FIELDS:
        raise ConfigError(name, "is not a UNetConfig field")
    return UNET_FIELDS[name](name, value)


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


# -- the network's structure and size, in closed form -----------------------------------


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


def parameter_count(cfg: UNetConfig) -> int:
    """The number of parameters of ``UNet(cfg)``, computed from the config alone."""
    plan = unet_layout(cfg)
    ch0, temb = cfg.base_channels, plan.temb

    def conv(cin: int, cout: int, k: int = 3) -> int:
        return cin * cout * k * k + cout

    def linear(cin: int, cout: int) -> int:
        return cin * cout + cout

    def resblock(cin: int, cout: int) -> int:
        n = 2 * cin + conv(cin, cout) + linear(temb, cout) + 2 * cout + conv(cout, cout)
        return n + (conv(cin, cout, 1) if cin != cout else 0)

    def attention(c: int) -> int:
        return 2 * c + linear(c, 3 * c) + linear(c, c)

    n = linear(ch0, temb) + linear(temb, temb)  # time embedding MLP
    if cfg.num_classes:
        n += (cfg.num_classes + 1) * temb  # + the null class of classifier-free guidance
    n += conv(cfg.in_channels, ch0)
    for stage in plan.down + plan.up:
        for cin, cout in stage.blocks:
            n += resblock(cin, cout) + (attention(cout) if stage.attention else 0)
        if stage.resample:
            n += conv(stage.blocks[-1][1], stage.blocks[-1][1])
    mid = plan.mid_channels
    n += 2 * resblock(mid, mid) + (attention(mid) if cfg.mid_attention else 0)
    n += 2 * ch0 + conv(ch0, cfg.out_channels)
    return n


def activation_bytes(cfg: UNetConfig) -> int:
    """An upper estimate of the float32 activation memory of one image's forward pass.

    Counts every intermediate tensor (as a training step keeps them for the
    backward pass; inference holds less) and, for each attention layer, the
    (heads, HW, HW) score and probability matrices that the plain SDPA kernel
    materialises. Closed form, from the config alone.
    """
    plan = unet_layout(cfg)
    ch0 = cfg.base_channels

    def resblock(cin: int, cout: int, area: int) -> int:
        # norm1, silu (cin); conv1, + temb, norm2, silu, dropout, conv2, sum (cout); skip.
        return area * (2 * cin + 7 * cout + (cout if cin != cout else 0))

    def attention(c: int, area: int) -> int:
        # norm, qkv (3c), q/k/v transposed copies (3c), output, projection, residual.
        return area * 10 * c + 2 * plan.heads(c) * area * area

    elements = 2 * 4 * ch0  # time embedding
    elements += ch0 * cfg.image_size**2  # conv_in
    for stage in plan.down:
        area = stage.resolution**2
        for cin, cout in stage.blocks:
            elements += resblock(cin, cout, area)
            elements += attention(cout, area) if stage.attention else 0
        if stage.resample:
            c = stage.blocks[-1][1]
            elements += c * (stage.resolution + 1) ** 2 + c * area // 4  # pad, strided conv
    mid, area = plan.mid_channels, plan.mid_resolution**2
    elements += 2 * resblock(mid, mid, area) + (attention(mid, area) if cfg.mid_attention else 0)
    for stage in plan.up:
        area = stage.resolution**2
        for cin, cout in stage.blocks:
            elements += area * cin  # the concatenation with the skip
            elements += resblock(cin, cout, area)
            elements += attention(cout, area) if stage.attention else 0
        if stage.resample:
            c = stage.blocks[-1][1]
            elements += 2 * c * area * 4  # nearest upsampling, then a conv at 2x
    elements += cfg.image_size**2 * (2 * ch0 + cfg.out_channels)  # norm_out, silu, conv_out
    return elements * FLOAT_BYTES


class ModelTooLarge(ConfigError):
    """The network a config describes exceeds a size limit: ``limit`` is ``"params"`` or
    ``"activation_bytes"``."""

    def __init__(self, field: str, problem: str, limit: str = "params") -> None:
        super().__init__(field, problem)
        self.limit = limit

    def within(self, prefix: str) -> ModelTooLarge:
        return ModelTooLarge(f"{prefix}.{self.field}", self.problem, self.limit)


def check_model_size(
    cfg: UNetConfig,
    max_params: int | None = DEFAULT_MAX_PARAMS,
    max_activation_bytes: int | None = DEFAULT_MAX_ACTIVATION_BYTES,
    field: str = "unet",
) -> tuple[int, int]:
    """(parameters, activation bytes per image) of ``cfg``; ModelTooLarge over a limit
    (None: no limit). Nothing is allocated."""
    params = parameter_count(cfg)
    if max_params is not None and params > max_params:
        raise ModelTooLarge(field, f"has {params:,} parameters, above the limit of {max_params:,}")
    act = activation_bytes(cfg)
    if max_activation_bytes is not None and act > max_activation_bytes:
        raise ModelTooLarge(
            field,
            f"needs about {act / 2**30:,.2f} GiB of activations per image, "
            f"above the limit of {max_activation_bytes / 2**30:,.2f} GiB",
            "activation_bytes",
        )
    return params, act
