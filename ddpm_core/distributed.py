"""Data-parallel training over several processes: torch.distributed, launched by torchrun.

Each process (rank) runs the same training loop. Every rank draws the same global batch
from the seeded per-step generator (indices, t, noise, label dropout), computes the
network on its own contiguous, disjoint slice of every micro-batch, and
DistributedDataParallel averages the gradients. Each rank's loss is weighted by
``world * rows_r / rows`` so that the average equals the gradient of the mean over the
whole global batch, for any split: the update equals the single-process one up to float
rounding. The optimizer state is therefore the same on every rank, and EMA, checkpoints,
resumable state and previews are rank 0's business alone; a run saved with N processes
resumes with any other number.

Launch: ``ddpm train --nproc-per-node N ...`` (re-runs itself under
``python -m torch.distributed.run``), or ``torchrun ... -m app.cli.train train ...``
for several hosts. The environment that torchrun sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) is all that :func:`setup` reads.
NCCL on CUDA (one GPU per local rank), gloo on the CPU.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ddpm_core.pipeline import resolve_device

__all__ = [
    "DistContext",
    "setup",
    "init_group",
    "from_main",
    "rank",
    "env_world_size",
    "launch_command",
]

T = TypeVar("T")
_MIX = 1_000_003


def env_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class DistContext:
    """This process's place in the run; with ``world == 1`` every method is a no-op."""

    world: int
    rank: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- the data -----------------------------------------------------------------------
    def bounds(self, size: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of ``size`` rows: contiguous and disjoint, the first
        ``size % world`` ranks one row more."""
        base, extra = divmod(size, self.world)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def shard(self, start: int, size: int) -> slice:
        """This rank's slice of the rows ``[start, start + size)`` of a global batch."""
        lo, hi = self.bounds(size)
        return slice(start + lo, start + hi)

    def grad_weight(self, size: int) -> float:
        """Factor on this rank's mean loss so that DDP's gradient average is the gradient
        of the mean over all ``size`` rows (exactly 1.0 for equal shards)."""
        lo, hi = self.bounds(size)
        return self.world * (hi - lo) / size

    # -- the model ----------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (which also broadcasts rank 0's weights)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def sync_grads(self, net: torch.nn.Module, sync: bool) -> None:
        """Whether the next backward pass all-reduces gradients: only the last micro-batch
        of an accumulated step does (what DDP's ``no_sync()`` does, without a block)."""
        ddp = getattr(net, "_orig_mod", net)  # under torch.compile
        if hasattr(ddp, "require_backward_grad_sync"):
            ddp.require_backward_grad_sync = sync

    # -- agreement between ranks --------------------------------------------------------
    def global_loss(self, local: float, size: int) -> float:
        """The mean loss over the global batch from every rank's mean over its rows."""
        if not self.active:
            return local
        lo, hi = self.bounds(size)
        t = torch.tensor([local * (hi - lo) / size], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (e.g. a stop request)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run by rank 0 and sent to every rank (its exception re-raised on all)."""
        return from_main(fn)

    def tensors_from_main(self, fn: Callable[[], T]) -> T:
        """Like :meth:`from_main` for tensors in plain containers (e.g. a training state):
        sent as ``torch.save`` bytes and read back with ``weights_only=True``."""
        if not self.active:
            return fn()
        mine: list[Any] = []

        def encode() -> bytes:
            mine.append(fn())
            buf = io.BytesIO()
            torch.save(mine[0], buf)
            return buf.getvalue()

        data = from_main(encode)
        return mine[0] if mine else torch.load(io.BytesIO(data), weights_only=True)

    def seed_dropout(self, seed: int, step: int) -> None:
        """Give ranks other than 0 their own global RNG stream (dropout): rank 0 keeps the
        seeded or resumed one, so a one-process run is rank 0's."""
        if self.rank:
            torch.manual_seed((seed * _MIX + step) * 8191 + self.rank)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if :func:`setup` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def meta(self) -> dict[str, int]:
        """What a checkpoint's meta.json records about the processes (nothing for one)."""
        return {"processes": self.world} if self.active else {}


def _device(spec: str, local_rank: int, world: int) -> torch.device:
    """The device of a rank: the local rank's GPU for ``auto``/``cuda``/``cuda:N`` when
    several processes run (torchrun gives each its ``LOCAL_RANK``), else ``spec``."""
    dev = resolve_device(spec)
    if world > 1 and dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                "start at most one process per GPU"
            )
        return torch.device("cuda", local_rank)
    return dev


def init_group() -> bool:
    """Join the process group of torchrun's environment unless there is none or it exists
    already; True when this call created it. Gloo carries CPU tensors and Python objects,
    NCCL (when CUDA is present) the GPU tensors: one group serves both."""
    if env_world_size() == 1 or dist.is_initialized():
        return False
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return True


def from_main(fn: Callable[[], T]) -> T:
    """``fn()`` run by rank 0 and sent to every rank of the current process group (its
    exception re-raised on all); plainly ``fn()`` without a group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0)  # over gloo, in CPU memory
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def rank() -> int:
    """This process's rank (0 without a process group)."""
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def setup(device: str = "auto") -> DistContext:
    """This process's :class:`DistContext`: joins (or creates) the process group that
    torchrun's environment describes; a single process when there is none."""
    if env_world_size() == 1 and not dist.is_initialized():
        return DistContext(1, 0, 0, resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local_rank, env_world_size())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = init_group()
    return DistContext(dist.get_world_size(), dist.get_rank(), local_rank, dev, owns)


def launch_command(
    nproc: int, module: str, args: Sequence[str], extra: Sequence[str] = ()
) -> list[str]:
    """The command that runs ``python -m module args`` as ``nproc`` processes on this host
    under PyTorch's launcher (``--standalone``: a local rendezvous on a free port)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", *extra, "-m", module, *args,
    ]  # fmt: skip
