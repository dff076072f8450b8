"""Images/s of our sampler against diffusers' DDPMPipeline / DDIMPipeline on identical weights.

One process, the same converted weights, the same batch sizes and step counts;
runs alternate between the contenders, warm-up runs are excluded, and the
median of the timed runs is reported. On CUDA the achieved TFLOP/s and the
fraction of the device's dense bf16 peak are printed as well, from the FLOPs
of one forward counted by PyTorch's FLOP counter (convolutions and matrix
products: 12.11 GFLOP per 3x32x32 image for ddpm-cifar10). This prints
figures; it asserts nothing.

    python bench/sampler.py                      # CPU defaults: tiny and small, small batches
    python bench/sampler.py --device cuda --preset ddpm-cifar10 --steps 20 --batch 64,256,max \\
        --compile --compile-batches max --cuda-graphs --graphs-batches 64,max --device-noise

Contenders: diffusers fp32 (and fp16 on CUDA) as users call the pipelines;
ours fp32 (plain eager), fp32 channels-last, and on CUDA bf16 autocast
(channels-last, what the service runs), the same with the noise drawn on the
device instead of the CPU (``--device-noise``: the cost of a seed meaning one
image everywhere), torch.compile (``--compile``) and CUDA graphs
(``--cuda-graphs``, compile mode reduce-overhead). ``max`` in ``--batch`` is
the largest batch the memory probe allows (up to ``--probe-limit``).
``--deadline`` bounds the whole run: past it, nothing new is started.
Per-step costs dominate, so img/s at S steps is S/1000 of img/s at 1000 steps
and the ratios between contenders do not depend on S.
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

from ddpm_core.acceleration import FastDenoiser, FastOptions, probe_max_batch  # noqa: E402
from ddpm_core.convert import diffusers_config, from_diffusers  # noqa: E402
from ddpm_core.guidance import make_denoiser  # noqa: E402
from ddpm_core.pipeline import resolve_device  # noqa: E402
from ddpm_core.samplers import sample, step_table  # noqa: E402
from ddpm_core.schedule import NoiseSchedule  # noqa: E402
from ddpm_core.seeding import BatchNoise  # noqa: E402
from ddpm_core.unet import preset  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; the
# first matching key wins, so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("4090", 165.0),
)


def peak_bf16_tflops(name: str) -> float | None:
    """The dense bf16 peak of a device by its name (None when unknown)."""
    return next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default="tiny,small", help="comma-separated UNet presets")
    ap.add_argument("--image-size", type=int, default=None, help="default: 32 (16 on CPU)")
    ap.add_argument("--batch", default=None, help="comma-separated batch sizes; 'max': probed")
    ap.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default 20 CPU, 1000 GPU)"
    )
    ap.add_argument("--samplers", default="ddpm,ddim")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per contender")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time our torch.compile path")
    ap.add_argument(
        "--cuda-graphs", action="store_true", help="also time compile mode reduce-overhead (CUDA)"
    )
    ap.add_argument(
        "--compile-batches", default="all", help="batches that time --compile ('max' ok)"
    )
    ap.add_argument(
        "--graphs-batches", default="all", help="batches that time --cuda-graphs ('max' ok)"
    )
    ap.add_argument(
        "--device-noise", action="store_true", help="also time bf16 with noise drawn on the GPU"
    )
    ap.add_argument("--no-diffusers-fp16", dest="diffusers_fp16", action="store_false")
    ap.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="skip the channels-last contender (the service's default layout)",
    )
    ap.add_argument("--probe-limit", type=int, default=1024, help="largest batch 'max' may be")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak (CUDA)")
    ap.add_argument("--deadline", type=float, default=None, help="seconds; then stop starting")
    ap.add_argument(
        "--compile-reserve",
        type=float,
        default=150.0,
        help="seconds left before the deadline below which compiled paths are skipped",
    )
    ap.add_argument("--profile", default=None, help="write a torch.profiler table of ours here")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)

    import diffusers

    started = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.image_size or (32 if cuda else 16)
    batch_spec = (args.batch or ("64,128" if cuda else "1,8,32")).split(",")
    steps = args.steps or (1000 if cuda else 20)
    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    peak = args.peak_tflops or (peak_bf16_tflops(device_name) if cuda else None)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} device={device_name} "
        f"threads={torch.get_num_threads()} torch={torch.__version__} "
        f"diffusers={diffusers.__version__} python={platform.python_version()}"
    )
    if cuda:
        print(
            f"# dense bf16 peak {peak} TFLOP/s (by device name); TF32 convolutions "
            f"{torch.backends.cudnn.allow_tf32}, matmul {torch.backends.cuda.matmul.allow_tf32}"
        )
    print(
        f"# image {size}x{size}, {steps} steps, median of {args.repeats} timed runs after "
        f"{args.warmup} warm-up; img/s@1000 = img/s x {steps}/1000"
    )
    header = (
        "| preset | sampler | batch | contender | img/s | img/s@1000 | median s "
        "| vs diffusers fp32 |"
    )
    extra = " vs diffusers fp16 | TFLOP/s | of bf16 peak |" if cuda else ""
    print(header + extra)
    print("|" + "---|" * (header.count("|") - 1 + (3 if cuda else 0)), flush=True)

    def left() -> float:
        return (
            float("inf") if args.deadline is None else args.deadline - (time.monotonic() - started)
        )

    schedule = NoiseSchedule.linear(1000)
    results: list[dict] = []
    for name in args.preset.split(","):
        cfg = preset(name, image_size=size, dropout=0.0)
        torch.manual_seed(0)
        ref = diffusers.UNet2DModel(**diffusers_config(cfg)).eval().to(device)
        ours = from_diffusers(ref).to(device).eval()
        shape = (cfg.in_channels, size, size)
        gflop = forward_gflop(ours, shape, device)
        print(f"# {name}: {sum(p.numel() for p in ours.parameters()):,} parameters, "
              f"{gflop:.3f} GFLOP per forward of one image (FLOP counter)")  # fmt: skip
        batches, probed = _batches(batch_spec, ours, shape, device, args.probe_limit)
        if probed is not None:
            print(f"# memory probe (bf16, eager): {probed} images fit (limit {args.probe_limit})")

        compile_batches, graphs_batches = (
            set(batches)
            if spec == "all"
            else set(_batches(spec.split(","), ours, shape, device, args.probe_limit)[0])
            for spec in (args.compile_batches, args.graphs_batches)
        )
        shared = _Shared(ours, ref, args, cuda)  # compiled networks are reused across samplers
        for sampler in args.samplers.split(","):
            for batch in batches:
                if left() <= 0:
                    print(f"# {name} {sampler} batch {batch}: skipped, past the deadline")
                    continue
                wanted = {
                    "compiled": args.compile and batch in compile_batches,
                    "graphs": args.cuda_graphs and cuda and batch in graphs_batches,
                }
                # A graph already built for this batch size costs nothing more.
                room = left() > args.compile_reserve
                use = {k: w and (room or (k, batch) in shared.built) for k, w in wanted.items()}
                for k in (k for k in wanted if wanted[k] and not use[k]):
                    print(f"# {name} {sampler} batch {batch}: {k} skipped, "
                          f"{left():.0f} s left (< --compile-reserve)")  # fmt: skip
                shared.built |= {(k, batch) for k in use if use[k]}
                contenders = _contenders(
                    args, sampler, batch, steps, ref, shared, schedule, shape, device, use
                )
                for _ in range(args.warmup):
                    for key, fn in list(contenders.items()):
                        try:
                            fn()
                        except Exception as exc:  # noqa: BLE001 - one contender fails alone
                            print(f"# {name} {sampler} batch {batch}: {key} failed: "
                                  f"{type(exc).__name__}: {str(exc)[:300]}")  # fmt: skip
                            del contenders[key]
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                if "diffusers fp32" not in contenders:
                    continue
                times: dict[str, list[float]] = {k: [] for k in contenders}
                for _ in range(args.repeats):
                    for key, fn in contenders.items():  # alternate contenders each round
                        times[key].append(timed(fn, device))
                base = statistics.median(times["diffusers fp32"])
                base16 = statistics.median(times.get("diffusers fp16", [float("nan")]))
                for key, ts in times.items():
                    med = statistics.median(ts)
                    ips = batch / med
                    row = (
                        f"| {name} | {sampler} | {batch} | {key} | {ips:.2f} | "
                        f"{ips * steps / 1000:.3f} | {med:.3f} | {base / med:.2f}x |"
                    )
                    tflops = gflop * batch * steps / med / 1e3
                    if cuda:
                        mfu = f"{tflops / peak:.1%}" if peak else "n/a"
                        row += f" {base16 / med:.2f}x | {tflops:.1f} | {mfu} |"
                    print(row, flush=True)
                    results.append(
                        dict(preset=name, sampler=sampler, batch=batch, contender=key, ips=ips,
                             tflops=tflops)
                    )  # fmt: skip
        if args.profile and cuda and left() > 0:
            try:
                _profile(args.profile, shared, schedule, shape, device, max(batches), steps)
            except Exception as exc:  # noqa: BLE001 - the figures above stand
                print(f"# profile failed: {type(exc).__name__}: {str(exc)[:300]}")
    _summary(results, peak if cuda else None)


def _batches(
    spec: list[str], model: torch.nn.Module, shape, device, limit: int
) -> tuple[list[int], int | None]:
    """Batch sizes of ``spec``; 'max' is what the memory probe allows (bf16 on CUDA)."""
    probed = None
    if "max" in spec:
        ctx = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        with ctx:
            probed = probe_max_batch(model, shape, device, limit, key="bench")
    out = sorted({probed if b == "max" else int(b) for b in spec})  # type: ignore[misc]
    return out, probed


class _Shared:
    """Our networks, built once: compiled graphs then serve every sampler of a batch size."""

    def __init__(self, ours: torch.nn.Module, ref: torch.nn.Module, args, cuda: bool) -> None:
        self.eager = ours
        # diffusers' fp16 contender: its own half-precision copy of the very same weights.
        self.ref16 = copy.deepcopy(ref).half() if cuda and args.diffusers_fp16 else None
        cl = args.channels_last
        self.fast = FastDenoiser(copy.deepcopy(ours), FastOptions(channels_last=cl))
        self.compiled = self.graphs = None
        self.built: set[tuple[str, int]] = set()  # (path, batch) compiled so far
        if args.compile:
            # Inductor's default mode (no CUDA graphs: they have their own row; no autotuning,
            # whose compile time would not fit a bounded run).
            self.compiled = FastDenoiser(
                copy.deepcopy(ours), FastOptions(channels_last=cl, compile=True)
            )
        if args.cuda_graphs and cuda:
            self.graphs = FastDenoiser(
                copy.deepcopy(ours),
                FastOptions(channels_last=cl, compile=True, compile_mode="reduce-overhead"),
            )


def _contenders(args, sampler, batch, steps, ref, shared, schedule, shape, device, use):
    import diffusers

    cuda = device.type == "cuda"

    def make_pipe(unet: torch.nn.Module):
        if sampler == "ddpm":
            sched = diffusers.DDPMScheduler(num_train_timesteps=1000, variance_type="fixed_small")
            pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
        else:
            sched = diffusers.DDIMScheduler(num_train_timesteps=1000)
            pipe = diffusers.DDIMPipeline(unet=unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    pipe32 = make_pipe(ref)
    pipe32.scheduler.set_timesteps(steps)
    timesteps = pipe32.scheduler.timesteps.tolist()  # sample on the very same timesteps
    table = step_table(schedule, timesteps, sampler, "fixed_small")

    def run_diffusers(pipe) -> Callable[[], object]:
        def run() -> object:
            g = torch.Generator(device=device).manual_seed(0)
            with torch.inference_mode():
                return pipe(
                    batch_size=batch, generator=g, num_inference_steps=steps, output_type="np"
                )

        return run

    def run_ours(
        model: torch.nn.Module, autocast: torch.dtype | None, generator_device: str = "cpu"
    ) -> Callable[[], object]:
        def run() -> object:
            noise = BatchNoise(0, batch, device, generator_device)  # type: ignore[arg-type]
            with torch.inference_mode():
                x = sample(
                    make_denoiser(model, None, 1.0, autocast), table, noise.initial(shape), noise
                )
                return ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

        return run

    out = {"diffusers fp32": run_diffusers(pipe32)}
    if cuda and args.diffusers_fp16:
        out["diffusers fp16"] = run_diffusers(make_pipe(shared.ref16))
    out["ours fp32"] = run_ours(shared.eager, None)
    if args.channels_last:
        out["ours fp32 channels-last"] = run_ours(shared.fast, None)
    if cuda:
        out["ours bf16"] = run_ours(shared.fast, torch.bfloat16)
        if args.device_noise:
            out["ours bf16, noise drawn on the GPU"] = run_ours(
                shared.fast, torch.bfloat16, "device"
            )
    if use["compiled"] and shared.compiled is not None:
        out["ours compiled" + (" bf16" if cuda else "")] = run_ours(
            shared.compiled, torch.bfloat16 if cuda else None
        )
    if use["graphs"] and shared.graphs is not None:
        out["ours CUDA graphs bf16"] = run_ours(shared.graphs, torch.bfloat16)
    return out


def _profile(path, shared, schedule, shape, device, batch, steps) -> None:
    """torch.profiler over a few steps of our bf16 path (the fastest eager one) at ``batch``."""
    from torch.profiler import ProfilerActivity, profile

    table = step_table(schedule, min(steps, 10), "ddpm", "fixed_small")
    # CUDA graphs only when already built for this batch: a compile here would not fit.
    graphs = shared.graphs is not None and ("graphs", batch) in shared.built
    model = shared.graphs if graphs else shared.fast

    def run() -> None:
        noise = BatchNoise(0, batch, device)
        with torch.inference_mode():
            sample(make_denoiser(model, None, 1.0, torch.bfloat16), table, noise.initial(shape),
                   noise)  # fmt: skip

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    which = "CUDA graphs" if graphs else "eager channels-last"
    text = [
        f"# torch.profiler: ours bf16 ({which}), batch {batch}, {len(table)} DDPM steps",
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=30),
        prof.key_averages().table(sort_by="cpu_time_total", row_limit=15),
    ]
    Path(path).write_text("\n".join(text))
    print(f"# profile of ours at batch {batch} written to {path}")


def _summary(results: list[dict], peak: float | None) -> None:
    """Best img/s of each contender over the batch sizes, and the targets' ratios."""
    if not results:
        return
    print("\n| preset | sampler | contender | best img/s | at batch | TFLOP/s |")
    print("|---|---|---|---|---|---|")
    best: dict[tuple, dict] = {}
    for r in results:
        k = (r["preset"], r["sampler"], r["contender"])
        if k not in best or r["ips"] > best[k]["ips"]:
            best[k] = r
    for (p, s, c), r in best.items():
        print(f"| {p} | {s} | {c} | {r['ips']:.2f} | {r['batch']} | {r['tflops']:.1f} |")
    for p, s in dict.fromkeys((p, s) for p, s, _ in best):
        ours = max((r for (pp, ss, c), r in best.items() if (pp, ss) == (p, s)
                    and c.startswith("ours")), key=lambda r: r["ips"])  # fmt: skip
        line = f"# {p} {s}: best of ours = {ours['contender']} at batch {ours['batch']}"
        for base, target in (("diffusers fp32", 3.0), ("diffusers fp16", 1.5)):
            if (p, s, base) in best:
                ratio = ours["ips"] / best[(p, s, base)]["ips"]
                line += f"; {ratio:.2f}x best {base} (target >= {target}x)"
        if peak:
            line += f"; {ours['tflops'] / peak:.1%} of bf16 peak (target >= 40%)"
        print(line)


if __name__ == "__main__":
    main()
