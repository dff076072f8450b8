"""The size of the network a :class:`~ddpm_core.config.unet.UNetConfig` describes, in closed
form: its parameter count and an upper estimate of its activation memory, so that a config
can be bounded before anything is allocated (the API does so without torch)."""

from __future__ import annotations

from ddpm_core.config.checks import ConfigError
from ddpm_core.config.unet import UNetConfig, unet_layout

__all__ = [
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
