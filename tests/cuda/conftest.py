"""The CUDA tests (marked ``cuda``): helpers in cuda_helpers.py; bench/gpu_check.sh runs
them on a GPU machine, elsewhere they are skipped with the reason."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
