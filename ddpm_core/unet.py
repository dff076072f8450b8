"""The noise-prediction network eps_theta(x_t, t[, y]): the DDPM UNet.

Architecture of Ho et al. 2020 (Appendix B), itself a PixelCNN++-style UNet:
a sinusoidal time embedding and MLP, residual blocks (GroupNorm, SiLU,
dropout, a per-block projection of the time embedding), self-attention at
chosen resolutions, strided-convolution downsampling, nearest-neighbour
upsampling, and skip connections from every down-path activation. Optional
class conditioning adds a learned class embedding to the time embedding, with
one extra "null" class for classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The config lives in a torch-free module (the API validates checkpoints with it).
from ddpm_core.config.unet import PRESETS, StagePlan, UNetConfig, preset, unet_layout

__all__ = ["UNetConfig", "UNet", "PRESETS", "preset", "timestep_embedding"]


def timestep_embedding(
    t: torch.Tensor, dim: int, flip_sin_to_cos: bool = False, freq_shift: float = 1.0
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017, Sec. 3.5).

    Frequencies are 10000^(-i / (dim/2 - freq_shift)); freq_shift=1 is the DDPM
    TF code, 0 the transformer paper.
    """
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features followed by Linear-SiLU-Linear."""

    def __init__(self, cfg: UNetConfig, dim_out: int) -> None:
        super().__init__()
        self.dim = cfg.base_channels
        self.flip_sin_to_cos = cfg.flip_sin_to_cos
        self.freq_shift = cfg.freq_shift
        self.linear1 = nn.Linear(self.dim, dim_out)
        self.linear2 = nn.Linear(dim_out, dim_out)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.dim, self.flip_sin_to_cos, self.freq_shift)
        return self.linear2(F.silu(self.linear1(emb.to(self.linear1.weight.dtype))))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, + time projection, GroupNorm-SiLU-Dropout-Conv, + skip."""

    def __init__(self, cin: int, cout: int, temb: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.norm_groups, cin, eps=cfg.norm_eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(cfg.norm_groups, cout, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over spatial positions, via SDPA."""

    def __init__(self, ch: int, cfg: UNetConfig) -> None:
        super().__init__()
        head_dim = cfg.attention_head_dim or ch
        if ch % head_dim:
            raise ValueError(f"attention_head_dim {head_dim} does not divide {ch} channels")
        self.heads = ch // head_dim
        self.norm = nn.GroupNorm(cfg.norm_groups, ch, eps=cfg.norm_eps)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj_out = nn.Linear(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).reshape(b, h * w, 3, self.heads, c // self.heads).unbind(2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        out = self.proj_out(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, ch: int, padding: int) -> None:
        super().__init__()
        self.asymmetric = padding == 0
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asymmetric:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """The residual blocks (and attentions) of one resolution, and the resampler after them."""

    def __init__(
        self,
        blocks: list[ResBlock],
        attns: list[SelfAttention] | None,
        resample: nn.Module | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns) if attns else None
        self.resample = resample


class MidBlock(nn.Module):
    def __init__(self, ch: int, temb: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.block1 = ResBlock(ch, ch, temb, cfg)
        self.attn = SelfAttention(ch, cfg) if cfg.mid_attention else None
        self.block2 = ResBlock(ch, ch, temb, cfg)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.block1(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        return self.block2(x, emb)


class UNet(nn.Module):
    """eps_theta(x_t, t, y): predicts the noise in ``x`` at timesteps ``t`` (one per row)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch0 = cfg.base_channels
        temb = 4 * ch0
        self.time_embed = TimestepEmbedding(cfg, temb)
        # Row num_classes is the null class: the unconditional model of classifier-free guidance.
        self.class_embed = nn.Embedding(cfg.num_classes + 1, temb) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)

        # One plan for the modules and for the closed-form sizes of config.size.
        plan = unet_layout(cfg)
        self.down = nn.ModuleList(self._stage(s, temb, cfg, down=True) for s in plan.down)
        self.mid = MidBlock(plan.mid_channels, temb, cfg)
        self.up = nn.ModuleList(self._stage(s, temb, cfg, down=False) for s in plan.up)

        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch0, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch0, cfg.out_channels, 3, padding=1)

    @staticmethod
    def _stage(plan: StagePlan, temb: int, cfg: UNetConfig, down: bool) -> Stage:
        blocks, attns = [], []
        for cin, cout in plan.blocks:  # block, attention, block, ...: the historic init order
            blocks.append(ResBlock(cin, cout, temb, cfg))
            if plan.attention:
                attns.append(SelfAttention(cout, cfg))
        ch = plan.blocks[-1][1]
        resample: nn.Module | None = None
        if plan.resample:
            resample = Downsample(ch, cfg.downsample_padding) if down else Upsample(ch)
        return Stage(blocks, attns, resample)

    @property
    def null_label(self) -> int | None:
        """The class index meaning "no class" (classifier-free guidance), if conditional."""
        return self.config.num_classes

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """eps for ``x`` (B, C, H, W) at timesteps ``t`` (B,). ``labels`` (B,) int, for a
        conditional model; omitted or equal to ``null_label`` means unconditional."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(t)
        if self.class_embed is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.config.num_classes, device=x.device)
            emb = emb + self.class_embed(labels)
        elif labels is not None:
            raise ValueError("this model is unconditional: labels must be None")

        h = self.conv_in(x)
        hs = [h]
        for stage in self.down:
            for i, block in enumerate(stage.blocks):
                h = block(h, emb)
                if stage.attns is not None:
                    h = stage.attns[i](h)
                hs.append(h)
            if stage.resample is not None:
                h = stage.resample(h)
                hs.append(h)
        h = self.mid(h, emb)
        for stage in self.up:
            for i, block in enumerate(stage.blocks):
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
                if stage.attns is not None:
                    h = stage.attns[i](h)
            if stage.resample is not None:
                h = stage.resample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
