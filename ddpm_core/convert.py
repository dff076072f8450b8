"""Import a diffusers ``UNet2DModel`` (e.g. the google/ddpm-cifar10-32 layout) into :class:`UNet`.

The two networks compute the same function; only parameter names differ, and
our attention keeps q, k and v in one fused projection. Old diffusers
checkpoints name the attention weights ``query/key/value/proj_attn``; both
spellings are accepted. diffusers itself is not needed to convert a saved
directory, only to hand over a live ``UNet2DModel``.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ddpm_core.checkpoint import CheckpointConfig
from ddpm_core.config.checks import ConfigError, check_int, check_int_list
from ddpm_core.config.names import PREDICTION_TYPES, VARIANCE_TYPES
from ddpm_core.unet import UNet, UNetConfig

__all__ = [
    "ConversionError",
    "unet_config_from_diffusers",
    "convert_state_dict",
    "from_diffusers",
    "load_diffusers_dir",
    "checkpoint_config_from_diffusers",
    "diffusers_config",
]


class ConversionError(ValueError):
    """The diffusers model uses a feature this UNet does not implement, or its weights are off."""


# Settings our UNet implements, with the only value(s) it supports.
_REQUIRED = {
    "act_fn": ("silu", "swish"),
    "time_embedding_type": ("positional",),
    "resnet_time_scale_shift": ("default",),
    "center_input_sample": (False,),
    "mid_block_scale_factor": (1, 1.0),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "class_embed_type": (None,),
    "mid_block_type": ("UNetMidBlock2D",),
    "attn_norm_num_groups": (None,),
    "time_embedding_dim": (None,),
}
_DOWN = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP = {"UpBlock2D": False, "AttnUpBlock2D": True}


def unet_config_from_diffusers(d: dict[str, Any]) -> UNetConfig:
    """Translate a ``UNet2DModel`` config dict; raise ConversionError for what we lack."""
    try:
        return _unet_config(d)
    except ConversionError:
        raise
    except (ConfigError, TypeError, ValueError, KeyError, IndexError, ZeroDivisionError) as exc:
        raise ConversionError(f"unsupported UNet2DModel config: {exc}") from None


def _unet_config(d: dict[str, Any]) -> UNetConfig:
    if not isinstance(d, dict):
        raise ConversionError(f"the model config must be a JSON object, got {type(d).__name__}")
    in_ch, out_ch = d.get("in_channels", 3), d.get("out_channels", 3)
    if out_ch != in_ch:
        raise ConversionError(
            f"out_channels={out_ch!r} differs from in_channels={in_ch!r}: the model predicts "
            "more than the noise (e.g. a learned variance), which is not implemented"
        )
    for key, allowed in _REQUIRED.items():
        if key in d and d[key] not in allowed:
            raise ConversionError(f"unsupported {key}={d[key]!r} (supported: {allowed})")
    default_channels = (224, 448, 672, 896)  # diffusers' default
    channels = check_int_list(
        "block_out_channels", d.get("block_out_channels", default_channels), 1, 2**20, 1
    )
    base = channels[0]
    if any(c % base for c in channels):
        raise ConversionError(f"block_out_channels {channels} are not multiples of {base}")
    down = list(d.get("down_block_types", ()))
    up = list(d.get("up_block_types", ()))
    if any(b not in _DOWN for b in down) or any(b not in _UP for b in up):
        raise ConversionError(f"unsupported block types {down} / {up}")
    if len(down) != len(channels) or len(up) != len(channels):
        raise ConversionError("need one down and one up block per entry of block_out_channels")
    attn_down = [_DOWN[b] for b in down]
    attn_up = [_UP[b] for b in up][::-1]  # up blocks run from the lowest resolution
    size = d.get("sample_size") or 32
    if isinstance(size, list | tuple):
        if len(size) != 2 or size[0] != size[1]:
            raise ConversionError(f"non-square sample_size {size}")
        size = size[0]
    size = check_int("sample_size", size, 1)
    up_res = tuple(size // 2**i for i, a in enumerate(attn_up) if a)
    # Values go to UNetConfig as they are: its validation refuses e.g. "2" for an int.
    return UNetConfig(
        image_size=size,
        in_channels=in_ch,
        out_channels=out_ch,
        base_channels=base,
        channel_mult=tuple(c // base for c in channels),
        num_res_blocks=d.get("layers_per_block", 2),
        attention_resolutions=tuple(size // 2**i for i, a in enumerate(attn_down) if a),
        up_attention_resolutions=None if attn_up == attn_down else up_res,
        mid_attention=d.get("add_attention", True),
        attention_head_dim=d.get("attention_head_dim", 8),
        dropout=d.get("dropout", 0.0),
        norm_groups=d.get("norm_num_groups", 32),
        norm_eps=d.get("norm_eps", 1e-5),
        num_classes=d.get("num_class_embeds"),
        flip_sin_to_cos=d.get("flip_sin_to_cos", True),
        freq_shift=d.get("freq_shift", 0),
        downsample_padding=d.get("downsample_padding", 1),
    )


_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "time_emb_proj": "time_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "skip",
}
_ATTN = {
    "group_norm": "norm",
    "to_out.0": "proj_out",
    "proj_attn": "proj_out",
    "to_q": "q",
    "query": "q",
    "to_k": "k",
    "key": "k",
    "value": "v",
    "to_v": "v",
}
_PATTERNS: list[tuple[re.Pattern[str], Any]] = [
    (
        re.compile(r"^time_embedding\.linear_(\d)\.(.+)$"),
        lambda m: f"time_embed.linear{m[1]}.{m[2]}",
    ),
    (re.compile(r"^conv_norm_out\.(.+)$"), lambda m: f"norm_out.{m[1]}"),
    (re.compile(r"^(conv_in|conv_out)\.(.+)$"), lambda m: f"{m[1]}.{m[2]}"),
    (re.compile(r"^class_embedding\.weight$"), lambda m: "class_embed.weight"),
    (
        re.compile(r"^(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)$"),
        lambda m: f"{m[1]}.{m[2]}.blocks.{m[3]}.{_RESNET[m[4]]}.{m[5]}",
    ),
    (
        re.compile(r"^(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.([\w.]+?)\.(weight|bias)$"),
        lambda m: f"{m[1]}.{m[2]}.attns.{m[3]}.{_ATTN[m[4]]}.{m[5]}",
    ),
    (
        re.compile(r"^(down|up)_blocks\.(\d+)\.(?:down|up)samplers\.0\.conv\.(weight|bias)$"),
        lambda m: f"{m[1]}.{m[2]}.resample.conv.{m[3]}",
    ),
    (
        re.compile(r"^mid_block\.resnets\.([01])\.(\w+)\.(weight|bias)$"),
        lambda m: f"mid.block{int(m[1]) + 1}.{_RESNET[m[2]]}.{m[3]}",
    ),
    (
        re.compile(r"^mid_block\.attentions\.0\.([\w.]+?)\.(weight|bias)$"),
        lambda m: f"mid.attn.{_ATTN[m[1]]}.{m[2]}",
    ),
]


def _rename(key: str) -> str:
    for pattern, repl in _PATTERNS:
        m = pattern.match(key)
        if m:
            try:
                return repl(m)
            except KeyError:
                break
    raise ConversionError(f"no mapping for diffusers parameter {key!r}")


def convert_state_dict(state: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """Rename diffusers parameters to ours; fuse q/k/v into ``qkv``; add the null class row."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name = _rename(key)
        prefix, _, leaf = name.rpartition(".")
        head, _, proj = prefix.rpartition(".")
        if proj in ("q", "k", "v"):
            qkv.setdefault(f"{head}.qkv.{leaf}", {})[proj] = value
        else:
            out[name] = value
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"attention {name} lacks one of q/k/v")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if cfg.num_classes is not None and "class_embed.weight" in out:
        # diffusers has no null class; an all-zero row is "no class information".
        w = out["class_embed.weight"]
        out["class_embed.weight"] = torch.cat([w, torch.zeros_like(w[:1])])
    return out


def from_diffusers(model: torch.nn.Module) -> UNet:
    """A :class:`UNet` computing what the live diffusers ``UNet2DModel`` computes."""
    cfg = unet_config_from_diffusers(dict(model.config))
    return _build(cfg, model.state_dict())


def _build(cfg: UNetConfig, state: dict[str, torch.Tensor]) -> UNet:
    unet = UNet(cfg)
    converted = convert_state_dict(state, cfg)
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            f"weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for k, v in converted.items():
        if v.shape != expected[k].shape:
            raise ConversionError(f"{k}: shape {tuple(v.shape)} != {tuple(expected[k].shape)}")
    unet.load_state_dict({k: v.float() for k, v in converted.items()})
    return unet.eval()


def load_diffusers_dir(path: str | Path) -> tuple[dict, UNet]:
    """Read a saved ``UNet2DModel`` (or a pipeline directory with ``unet/``) without diffusers.

    Returns the diffusers config (with the pipeline's scheduler config under
    ``"_scheduler"`` when present) and the converted :class:`UNet`.
    """
    root = Path(path)
    unet_dir = root / "unet" if (root / "unet" / "config.json").exists() else root
    dconfig = _read_json(unet_dir / "config.json")
    sched_file = root / "scheduler" / "scheduler_config.json"
    if sched_file.exists():
        dconfig["_scheduler"] = _read_json(sched_file)
    st = unet_dir / "diffusion_pytorch_model.safetensors"
    binf = unet_dir / "diffusion_pytorch_model.bin"
    if st.exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(st))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ConversionError(f"{st.name}: not a readable safetensors file ({exc})") from None
    elif binf.exists():
        # weights_only: a legacy pickle file can hold tensors but never run code. Anything
        # else in it (a class, a callable) is refused by the restricted unpickler.
        try:
            with warnings.catch_warnings():  # e.g. "protocol 4": the error below says it all
                warnings.simplefilter("ignore")
                state = torch.load(binf, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable .bin is a conversion error
            raise ConversionError(
                f"{binf.name}: refused, not a plain state dict of tensors "
                f"({_unpickle_reason(exc)}); nothing in it was run"
            ) from None
    else:
        raise ConversionError(f"{unet_dir}: no diffusion_pytorch_model.safetensors or .bin")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConversionError("the weights file does not hold a mapping of names to tensors")
    return dconfig, _build(unet_config_from_diffusers(dconfig), state)


def _unpickle_reason(exc: Exception) -> str:
    """The gist of a torch.load failure (its message is a paragraph of advice)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if rest:
            return rest[0][:200]
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return first or type(exc).__name__


def _read_json(file: Path) -> dict:
    if not file.exists():
        raise ConversionError(f"{file}: file is missing")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConversionError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{file}: expected a JSON object")
    return data


# Scheduler settings that change what the network means or how samples are formed, with
# the only value this library implements.
_SCHEDULER_REQUIRED: dict[str, tuple[Any, ...]] = {
    "prediction_type": PREDICTION_TYPES,  # the noise, v or x0 (not e.g. flow_prediction)
    "thresholding": (False,),  # dynamic thresholding of x0 (Imagen)
    "trained_betas": (None,),  # explicit betas instead of a named schedule
    "rescale_betas_zero_snr": (False,),  # betas rescaled to zero terminal SNR
    "beta_schedule": ("linear", "squaredcos_cap_v2"),
}
# diffusers' "_log" variants compute the same variance in log space.
_VARIANCE_TYPES = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
}


def _check_scheduler(sched: dict[str, Any]) -> None:
    """ConversionError for a scheduler setting this library would sample wrongly."""
    for key, allowed in _SCHEDULER_REQUIRED.items():
        if key in sched and sched[key] not in allowed:
            raise ConversionError(
                f"unsupported scheduler setting {key}={sched[key]!r} (supported: {allowed})"
            )
    clip_range = sched.get("clip_sample_range", 1.0)
    if sched.get("clip_sample", True) and clip_range != 1:
        raise ConversionError(
            f"unsupported scheduler setting clip_sample_range={clip_range!r} "
            "(x0 is clipped to [-1, 1] only)"
        )
    vt = sched.get("variance_type")
    if vt is not None and vt not in _VARIANCE_TYPES:
        raise ConversionError(
            f"unsupported scheduler setting variance_type={vt!r} "
            f"(supported: {sorted(_VARIANCE_TYPES)}; learned variances are not implemented)"
        )


def checkpoint_config_from_diffusers(
    dconfig: dict, unet_cfg: UNetConfig, variance_type: str | None = None
) -> CheckpointConfig:
    """The checkpoint config of a converted model (schedule from its scheduler config).

    ``variance_type`` (e.g. a command-line flag) wins over the scheduler's own; without
    either it is ``fixed_large``. The scheduler's ``prediction_type`` (epsilon, v_prediction
    or sample) is kept. Settings that change the model's meaning and that this library does
    not implement (another prediction type, thresholding, trained or rescaled betas, another
    clip range, learned variances) raise ConversionError.
    """
    sched = dconfig.get("_scheduler", {})
    if not isinstance(sched, dict):
        raise ConversionError("the scheduler config must be a JSON object")
    _check_scheduler(sched)
    if variance_type is not None and variance_type not in VARIANCE_TYPES:
        raise ConversionError(f"variance_type must be one of {VARIANCE_TYPES}")
    T = sched.get("num_train_timesteps", 1000)
    if sched.get("beta_schedule") == "squaredcos_cap_v2":
        schedule = {"kind": "cosine", "num_train_timesteps": T}
    else:
        schedule = {
            "kind": "linear",
            "num_train_timesteps": T,
            "beta_start": sched.get("beta_start", 1e-4),
            "beta_end": sched.get("beta_end", 0.02),
        }
    scheduler_variance = _VARIANCE_TYPES.get(sched.get("variance_type") or "")
    cfg = CheckpointConfig(
        unet=unet_cfg,
        schedule=schedule,
        variance_type=variance_type or scheduler_variance or "fixed_large",
        prediction_type=sched.get("prediction_type", "epsilon"),
        default_steps=min(1000, T) if isinstance(T, int) else 1000,
        default_sampler="ddpm",
        clip_denoised=sched.get("clip_sample", True),
    )
    try:  # every field through the checkpoint's own validation
        return CheckpointConfig.from_dict(cfg.to_dict())
    except ConfigError as exc:
        raise ConversionError(f"unsupported scheduler config: {exc}") from None


def diffusers_config(cfg: UNetConfig) -> dict[str, Any]:
    """The ``UNet2DModel`` keyword arguments of the network ``cfg`` describes (the inverse
    of :func:`unet_config_from_diffusers`), e.g. to benchmark against diffusers."""
    levels = range(len(cfg.channel_mult))
    up_attn = cfg.up_attention_resolutions
    up_attn = cfg.attention_resolutions if up_attn is None else up_attn
    res = [cfg.image_size // 2**i for i in levels]
    return {
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "block_out_channels": [cfg.base_channels * m for m in cfg.channel_mult],
        "down_block_types": [
            "AttnDownBlock2D" if r in cfg.attention_resolutions else "DownBlock2D" for r in res
        ],
        "up_block_types": ["AttnUpBlock2D" if r in up_attn else "UpBlock2D" for r in reversed(res)],
        "layers_per_block": cfg.num_res_blocks,
        "attention_head_dim": cfg.attention_head_dim,
        "add_attention": cfg.mid_attention,
        "dropout": cfg.dropout,
        "norm_num_groups": cfg.norm_groups,
        "norm_eps": cfg.norm_eps,
        "num_class_embeds": cfg.num_classes,
        "flip_sin_to_cos": cfg.flip_sin_to_cos,
        "freq_shift": cfg.freq_shift,
        "downsample_padding": cfg.downsample_padding,
    }
