"""Training in several processes for the train worker: ``ddpm train`` under torchrun as a
child process tree, relayed through files.

The worker keeps what it owns -- the job's lease, its progress events, its cancel flag --
and the children train: rank 0 appends one JSON line per step to a progress file (and a
last line with the outcome or the error), and every rank stops after its current step,
saving the state, once a stop file exists. The worker reads the lines into the job's
progress, creates the stop file on cancel (or a lost lease), and publishes what rank 0
saved. If the worker dies, the launcher gets SIGTERM (the kernel's parent-death signal)
and stops its ranks, which save their state for the next attempt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = [
    "ChildFailed",
    "ChildResult",
    "train_processes",
    "run_processes",
]

# Runs first in the child: ask the kernel for SIGTERM when the worker goes away (kept
# across exec), then become the launcher. No preexec_fn: the worker has threads.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)  # the worker is already gone\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class ChildFailed(Exception):
    """The training processes failed; ``type`` and ``message`` describe why."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message


@dataclass
class ChildResult:
    """What the worker needs of a finished run (the fields of ``TrainResult`` it reads)."""

    step: int
    total_steps: int
    final_loss: float
    stopped: bool
    processes: int


def train_processes(spec: str, device: str) -> tuple[int, dict[str, str], str]:
    """``DDPM_TRAIN_DEVICES`` -> (processes, environment for them, their device setting).

    ``auto``: every visible GPU (one process on the CPU, or when ``DDPM_DEVICE=cpu``);
    ``0,2``: those GPUs (indices among the visible ones); ``cpu`` or ``cpu:N``: N
    processes on the CPU (gloo), 1 by default."""
    if spec.startswith("cpu"):
        n = int(spec.partition(":")[2] or 1)
        return n, {}, "cpu"
    import torch

    if spec == "auto":
        if device == "cpu" or not torch.cuda.is_available():
            return 1, {}, device
        if device.startswith("cuda:"):
            return 1, {}, device  # one GPU asked for by name
        n = torch.cuda.device_count()
        return n, {}, ("cuda" if n > 1 else device)
    ids = [int(i) for i in spec.split(",")]
    if not torch.cuda.is_available():
        raise ValueError(f"DDPM_TRAIN_DEVICES={spec} names GPUs, but no CUDA device is available")
    count = torch.cuda.device_count()
    bad = [i for i in ids if i >= count]
    if bad:
        raise ValueError(f"DDPM_TRAIN_DEVICES={spec}: only {count} GPUs are visible")
    if len(ids) == 1:
        return 1, {}, f"cuda:{ids[0]}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = visible.split(",") if visible else [str(i) for i in range(count)]
    return len(ids), {"CUDA_VISIBLE_DEVICES": ",".join(names[i] for i in ids)}, "cuda"


class _Lines:
    """The complete JSON lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def _progress(rec: dict[str, Any]) -> SimpleNamespace:
    loss = rec.get("loss")
    return SimpleNamespace(
        step=int(rec.get("step", 0)),
        total_steps=int(rec.get("total", 0)),
        loss=float("nan") if loss is None else float(loss),
        lr=float(rec.get("lr", 0.0)),
        images_per_sec=float(rec.get("images_per_sec", 0.0)),
        # Not relayed from the child: multi-process runs send no preview grids.
        sample_png=None,
        checkpoint_path=None,
    )


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    kept = [x.strip() for x in text.splitlines() if x.strip()][-lines:]
    return " | ".join(kept)[-600:]


def run_processes(
    config: dict[str, Any],
    processes: int,
    env: dict[str, str],
    runs_dir: Path,
    job_id: str,
    progress: Callable[[Any], Any],
    cancel: threading.Event,
    command: str,
    poll: float = 0.2,
) -> ChildResult:
    """Train ``config`` (a TrainConfig dict) in ``processes`` processes on this host.

    ``progress(p)`` gets each step's progress (``p.step``, ``p.total_steps``, ``p.loss``,
    ``p.lr``, ``p.images_per_sec``); setting ``cancel`` stops the run after the current
    step, with its state saved. Raises :class:`ChildFailed` when the run failed."""
    from ddpm_core.distributed import launch_command

    runs_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".launch-{job_id}-", dir=runs_dir))
    try:
        run_config = work / "config.json"
        run_config.write_text(json.dumps(config))
        progress_file, stop_file, log = work / "progress.jsonl", work / "stop", work / "log.txt"
        args = [
            "train", "--run-config", str(run_config), "--progress-file", str(progress_file),
            "--stop-file", str(stop_file), "--job-id", job_id, "--provenance", command,
            "--no-progress",
        ]  # fmt: skip
        cmd = launch_command(processes, "app.cli.train", args)
        cmd = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, env=os.environ | env, stdout=out, stderr=subprocess.STDOUT, cwd=work
            )
        lines = _Lines(progress_file)
        done: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        try:
            while True:
                exited = proc.poll() is not None
                for rec in lines.read():
                    event = rec.get("event")
                    if event == "done":
                        done = rec
                    elif event == "error":
                        error = rec
                    else:
                        progress(_progress(rec))
                if exited:
                    break
                if cancel.is_set() and not stop_file.exists():
                    stop_file.touch()
                time.sleep(poll)
        except BaseException:
            _terminate(proc)
            raise
        if error is not None:
            raise ChildFailed(str(error.get("type", "Error")), str(error.get("message", "")))
        if done is None or proc.returncode != 0:
            raise ChildFailed(
                "TrainingProcessesFailed",
                f"the {processes} training processes exited with code {proc.returncode}: "
                f"{_tail(log)}",
            )
        loss = done.get("final_loss")
        return ChildResult(
            step=int(done["step"]),
            total_steps=int(done["total"]),
            final_loss=float("nan") if loss is None else float(loss),
            stopped=bool(done.get("stopped")),
            processes=int(done.get("processes", processes)),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _terminate(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM to the launcher (it stops its ranks, which save), SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
