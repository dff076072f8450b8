"""Images/s of our sampler against diffusers' DDPMPipeline / DDIMPipeline on identical weights.

One process, the same converted weights, the same batch sizes and step counts;
runs alternate between the contenders, warm-up runs are excluded, and the
median of the timed runs is reported. On CUDA the achieved TFLOP/s and the
fraction of the device's bf16 peak are printed as well (12.44 GFLOP per 32x32
forward of the ddpm-cifar10 model; other presets are measured with a FLOP
counter). This prints figures; it asserts nothing.

    python bench/sampler.py                      # CPU defaults: tiny and small, small batches
    python bench/sampler.py --device cuda --preset ddpm-cifar10 --steps 1000 --batch 64,128,256
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_core.acceleration import FastDenoiser, FastOptions  # noqa: E402
from ddpm_core.convert import diffusers_config, from_diffusers  # noqa: E402
from ddpm_core.guidance import make_denoiser  # noqa: E402
from ddpm_core.pipeline import resolve_device  # noqa: E402
from ddpm_core.samplers import sample, step_table  # noqa: E402
from ddpm_core.schedule import NoiseSchedule  # noqa: E402
from ddpm_core.seeding import BatchNoise  # noqa: E402
from ddpm_core.unet import preset  # noqa: E402

CIFAR10_FORWARD_GFLOP = 12.44
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "4090": 165.0}


def forward_gflop(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device) -> float:
    """GFLOP of one forward of one image, counted by PyTorch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, *shape, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x, torch.tensor([500], device=device))
    return counter.get_total_flops() / 1e9


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default="tiny,small", help="comma-separated UNet presets")
    ap.add_argument("--image-size", type=int, default=None, help="default: 32 (16 on CPU)")
    ap.add_argument("--batch", default=None, help="comma-separated batch sizes")
    ap.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default 20 CPU, 1000 GPU)"
    )
    ap.add_argument("--samplers", default="ddpm,ddim")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per contender")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time our torch.compile path")
    ap.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="skip the channels-last contender (the service's default layout)",
    )
    ap.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak (CUDA)")
    args = ap.parse_args()

    import diffusers

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.image_size or (32 if cuda else 16)
    batches = [int(b) for b in (args.batch or ("64,128" if cuda else "1,8,32")).split(",")]
    steps = args.steps or (1000 if cuda else 20)
    peak = args.peak_tflops
    if cuda and peak is None:
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    print(
        f"# {time.strftime('%Y-%m-%d')} device={device_name} threads={torch.get_num_threads()} "
        f"torch={torch.__version__} diffusers={diffusers.__version__} "
        f"python={platform.python_version()}"
    )
    print(
        f"# image {size}x{size}, {steps} steps, median of {args.repeats} timed runs after warm-up"
    )
    header = "| preset | sampler | batch | contender | img/s | median s | vs diffusers fp32 |"
    extra = " TFLOP/s | MFU |" if cuda else ""
    print(header + extra)
    print("|" + "---|" * (header.count("|") - 1 + (2 if cuda else 0)))

    schedule = NoiseSchedule.linear(1000)
    for name in args.preset.split(","):
        cfg = preset(name, image_size=size, dropout=0.0)
        torch.manual_seed(0)
        ref = diffusers.UNet2DModel(**diffusers_config(cfg)).eval().to(device)
        ours = from_diffusers(ref).to(device).eval()
        shape = (cfg.in_channels, size, size)
        gflop = (
            CIFAR10_FORWARD_GFLOP
            if name == "ddpm-cifar10" and size == 32
            else forward_gflop(ours, shape, device)
        )
        for sampler in args.samplers.split(","):
            for batch in batches:
                contenders = _contenders(
                    args, sampler, batch, steps, ref, ours, schedule, shape, device
                )
                times: dict[str, list[float]] = {k: [] for k in contenders}
                for _ in range(args.warmup):
                    for fn in contenders.values():
                        fn()
                for _ in range(args.repeats):
                    for key, fn in contenders.items():  # alternate contenders each round
                        times[key].append(timed(fn, device))
                base = statistics.median(times["diffusers fp32"])
                for key, ts in times.items():
                    med = statistics.median(ts)
                    row = (
                        f"| {name} | {sampler} | {batch} | {key} | {batch / med:.2f} | {med:.3f} "
                        f"| {base / med:.2f}x |"
                    )
                    if cuda:
                        tflops = gflop * batch * steps / med / 1e3
                        mfu = f"{tflops / peak:.1%}" if peak else "n/a"
                        row += f" {tflops:.1f} | {mfu} |"
                    print(row, flush=True)


def _contenders(args, sampler, batch, steps, ref, ours, schedule, shape, device):
    import diffusers

    cuda = device.type == "cuda"
    if sampler == "ddpm":
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000, variance_type="fixed_small")
        pipe = diffusers.DDPMPipeline(unet=ref, scheduler=sched)
    else:
        sched = diffusers.DDIMScheduler(num_train_timesteps=1000)
        pipe = diffusers.DDIMPipeline(unet=ref, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(steps)
    timesteps = pipe.scheduler.timesteps.tolist()  # sample on the very same timesteps
    table = step_table(schedule, timesteps, sampler, "fixed_small")

    def run_diffusers(dtype: torch.dtype) -> Callable[[], object]:
        def run() -> object:
            if pipe.unet.dtype != dtype:
                pipe.unet.to(dtype)
            g = torch.Generator(device=device).manual_seed(0)
            with torch.inference_mode():
                return pipe(
                    batch_size=batch, generator=g, num_inference_steps=steps, output_type="np"
                )

        return run

    def run_ours(model: torch.nn.Module, autocast: torch.dtype | None) -> Callable[[], object]:
        def run() -> object:
            noise = BatchNoise(0, batch, device)
            with torch.inference_mode():
                x = sample(
                    make_denoiser(model, None, 1.0, autocast), table, noise.initial(shape), noise
                )
                return ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

        return run

    out = {"diffusers fp32": run_diffusers(torch.float32)}
    if cuda:
        out["diffusers fp16"] = run_diffusers(torch.float16)
    out["ours fp32"] = run_ours(ours, None)
    fast = FastDenoiser(copy.deepcopy(ours), FastOptions(channels_last=args.channels_last))
    if args.channels_last:
        out["ours fp32 channels-last"] = run_ours(fast, None)
    if cuda:
        out["ours bf16"] = run_ours(fast, torch.bfloat16)
    if args.compile:
        compiled = FastDenoiser(
            copy.deepcopy(ours),
            FastOptions(
                channels_last=args.channels_last,
                compile=True,
                compile_mode="max-autotune-no-cudagraphs" if cuda else None,
            ),
        )
        out["ours compiled" + (" bf16" if cuda else "")] = run_ours(
            compiled, torch.bfloat16 if cuda else None
        )
    return out


if __name__ == "__main__":
    main()
