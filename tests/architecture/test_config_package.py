"""ddpm_core.config, the torch-free half of the model library: every module imports
without torch (the API validates checkpoints and training requests with it alone), and
it imports nothing of ddpm_core outside itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)

_IMPORT_CONFIG = """
import importlib, pkgutil, sys
import ddpm_core.config as pkg
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix="ddpm_core.config.")]
for name in names:
    importlib.import_module(name)
heavy = sorted(m for m in ("torch", "numpy", "safetensors", "PIL", "pydantic") if m in sys.modules)
print(len(names), "modules;", "heavy:", heavy)
assert len(names) >= 9, names
assert not heavy, heavy
"""


def test_every_config_module_imports_without_torch() -> None:
    r = subprocess.run(
        [sys.executable, "-c", _IMPORT_CONFIG],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "heavy: []" in r.stdout, r.stdout


def test_config_imports_nothing_of_ddpm_core_outside_itself() -> None:
    graph = grimp.build_graph("ddpm_core", cache_dir=None)
    config = {m for m in graph.modules if m.split(".")[:2] == ["ddpm_core", "config"]}
    assert len(config) >= 10
    outside = {
        (m, imported)
        for m in config
        for imported in graph.find_modules_directly_imported_by(m)
        if imported.startswith("ddpm_core") and imported not in config
    }
    assert outside == set()
    # The rest of ddpm_core does use it (the check above is not vacuous).
    users = graph.find_modules_that_directly_import("ddpm_core.config.unet")
    assert "ddpm_core.unet" in users


def test_preset_names_are_the_presets() -> None:
    from ddpm_core.config.names import PRESET_NAMES
    from ddpm_core.config.unet import PRESETS

    assert set(PRESET_NAMES) == set(PRESETS)


def test_samplers_take_their_vocabulary_from_config_names() -> None:
    from ddpm_core import samplers
    from ddpm_core.config import names

    assert samplers.SAMPLERS is names.SAMPLERS
    assert samplers.PREDICTION_TYPES is names.PREDICTION_TYPES
