"""The generation engine: one thread that owns the device and batches continuously.

Job threads (Celery's thread pool) hand jobs to :meth:`Engine.submit` and wait on
them. The engine thread keeps a model cache (LRU by checkpoint) and, at every
step boundary, admits waiting rows of the same checkpoint up to ``max_batch``,
runs ONE network call for all of them (each row with its own timestep, sampler,
step count and guidance), applies each row's own step, and retires finished
rows. Every row draws its x_T and step noise from its own generator seeded
``seed + i`` and only on the steps where its own table draws noise, so an image
equals the one ``ddpm_core.pipeline.generate`` makes alone (to float tolerance).
CUDA is touched only in the engine thread, and so is every parallel torch op: finished
images leave the engine as uint8 pixels, so that no job thread starts an OpenMP team of
its own to compete with the engine's (see docs/ARCHITECTURE.md, "Threads").

Per model the engine measures, when it loads it, the precision to run it in and the
batch size where images/s stops growing (:mod:`ddpm_core.tuning`), and picks each
call's rows by shortest remaining work (:mod:`worker.generate.batching`).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

import torch

from app.core.jobs.options import engine_fields
from app.core.jobs.spec import GENERATE_OPTIONS
from app.core.logs import log_event
from ddpm_core.acceleration import FastDenoiser, FastOptions, probe_max_batch
from ddpm_core.checkpoint import Checkpoint, load_checkpoint
from ddpm_core.guidance import guided_eps
from ddpm_core.images import to_uint8
from ddpm_core.pipeline import check_labels, resolve_device, step_table_for
from ddpm_core.samplers import StepTable, denoise_step, stack_coefs, stack_history
from ddpm_core.seeding import ImageRNG
from ddpm_core.tuning import (
    Precision,
    autocast_for,
    model_forward,
    model_precision,
    throughput_knee,
)
from worker.generate.batching import next_batch

__all__ = ["GenSpec", "EngineJob", "Engine", "RunFailure"]

log = logging.getLogger("ddpm.engine")

ProgressFn = Callable[[int, int, float], None]
# on_start(at): the job's first network call begins (wall clock): its wait for the engine ends.
StartFn = Callable[[float], None]
# on_preview(step, total, x0_hat): the first PREVIEW_ROWS rows' current x0 estimate, on CPU.
PreviewFn = Callable[[int, int, torch.Tensor], None]
PREVIEW_ROWS = 16


class RunFailure(Exception):
    """Why a job could not run in the engine; ``type`` names the cause (CheckpointError,
    NonFinite, OutOfMemory, ...) and becomes the job's error type."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message


# What to generate: the engine's options of the declared generation options (None: the
# checkpoint's default), plus which checkpoint directory and job.
GenSpec = make_dataclass(
    "GenSpec",
    [("job_id", str), ("checkpoint_path", str), ("checkpoint_ref", str)]
    + [(name, Any, field(default=default)) for name, default in engine_fields(GENERATE_OPTIONS)],
    frozen=True,
)
GenSpec.__doc__ = "What to generate: a job's normalised options and its checkpoint directory."


@dataclass
class BatchSegment:
    """Consecutive network calls of one job in batches of the same jobs and size:
    ``start``/``end`` (``time.time()``), ``calls``, the batch ``size`` (rows), how many
    ``jobs`` shared it and the ids of up to ``MAX_PARTNERS`` of them."""

    start: float
    end: float
    calls: int
    size: int
    jobs: int
    partners: list[str]
    key: int  # which jobs: a hash of the batch's job set


MAX_PARTNERS = 16
MAX_SEGMENTS = 512  # per job: past it, the last segment grows


def _extend_segment(
    job: EngineJob, start: float, end: float, size: int, jobs: list, key: int
) -> None:
    segs = job.segments
    assert segs is not None
    last = segs[-1] if segs else None
    if last is not None and (len(segs) >= MAX_SEGMENTS or (last.key == key and last.size == size)):
        last.end, last.calls = end, last.calls + 1
        return
    partners = [j.spec.job_id for j in jobs if j is not job][:MAX_PARTNERS]
    segs.append(BatchSegment(start, end, 1, size, len(jobs), partners, key))


@dataclass(eq=False)
class EngineJob:
    """A job inside the engine; the submitting thread waits on ``done``."""

    spec: GenSpec  # type: ignore[valid-type]
    on_progress: ProgressFn | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    status: str = "pending"  # -> succeeded | failed | canceled | interrupted (engine stopped)
    error: RunFailure | None = None
    images: torch.Tensor | None = None  # (count, C, H, W) on CPU, in [-1, 1]
    frames: list[torch.Tensor] = field(default_factory=list)  # grids' sources, (count, C, H, W)
    # The same as uint8 pixels, (count, H, W, C): what job threads encode, without torch.
    pixels: Any = None
    frame_pixels: list[Any] = field(default_factory=list)
    precision: str = ""  # the network's precision: fp32 | bf16
    network_calls: int = 0
    shared_calls: int = 0
    max_batch: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    submitted: float = field(default_factory=time.monotonic)
    # When its first network call began (time.time()); None while it waits for the engine
    # (rows of other jobs fill every call, or its model loads).
    started_at: float | None = None
    on_start: StartFn | None = None
    # With tracing on: the runs of consecutive network calls this job shared with the
    # same jobs (a span each, see worker.job_trace); None when off.
    segments: list[BatchSegment] | None = None
    # engine-side state
    _ckpt: Checkpoint | None = None
    _key: tuple | None = None
    _outputs: list[torch.Tensor | None] = field(default_factory=list)
    _frames: list[list[torch.Tensor]] = field(default_factory=list)
    _frame_steps: frozenset[int] = frozenset()
    _total_steps: int = 0
    _steps_done: int = 0
    _rows_left: int = 0
    _last_progress: float = 0.0
    # Live preview: while ``preview`` is set (a client watches), ``on_preview`` gets the
    # rows' latest x0 estimate at most every ``Engine.preview_interval`` seconds.
    preview: threading.Event | None = None
    on_preview: PreviewFn | None = None
    _x0: dict[int, torch.Tensor] = field(default_factory=dict)
    _last_preview: float = 0.0

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


@dataclass(eq=False)
class _Row:
    job: EngineJob
    index: int
    rng: ImageRNG
    table: StepTable
    x: torch.Tensor  # (C, H, W) on the device
    label: int | None
    scale: float
    k: int = 0
    # The row's previous x0_hat, most recent first (multistep samplers: table.history of them).
    history: tuple[torch.Tensor, ...] = ()


class Engine:
    """Continuous batching over one device. Thread-safe :meth:`submit`; one worker thread."""

    def __init__(
        self,
        device: str = "auto",
        max_batch: int = 64,
        cache_size: int = 2,
        progress_interval: float = 0.25,
        max_batch_log: int = 10000,
        threads: int | None = None,
        fast: FastOptions | None = None,
        autocast: str = "auto",
        finite_check_every: int = 16,
        model_limits: dict[str, int] | None = None,
        preview_interval: float = 0.5,
        knee_fraction: float = 0.9,
        starve_after: float = 30.0,
    ) -> None:
        self.preview_interval = preview_interval
        self.knee_fraction = knee_fraction  # 0: batches up to the memory limit
        self.starve_after = starve_after
        self.threads = threads
        self.fast = fast or FastOptions()
        self.autocast = autocast
        self.finite_check_every = finite_check_every
        self.model_limits = model_limits or {}  # load_checkpoint's size limits
        self._calls = 0
        self.device_spec = device
        self.device: torch.device | None = None
        self.max_batch = max_batch
        self.cache_size = cache_size
        self.progress_interval = progress_interval
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=max_batch_log)
        self._unflushed: list[int] = []
        self._cache: collections.OrderedDict[tuple, Checkpoint] = collections.OrderedDict()
        self._nets: dict[tuple, FastDenoiser] = {}  # the cached models, wrapped for speed
        self._batch_limit: dict[tuple, int] = {}  # rows per call, per model (knee, memory)
        self._precision: dict[tuple, Precision] = {}
        self._tables: dict[tuple, StepTable] = {}  # step tables, read-only once built
        self._dir_ids: dict[str, tuple[float, tuple[int, int]]] = {}
        self._loaded_refs: dict[tuple, str] = {}
        self._pending: list[EngineJob] = []
        self._rows: list[_Row] = []
        self._active: list[EngineJob] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.last_beat = time.monotonic()

    # -- public, any thread -----------------------------------------------------------------
    def start(self) -> Engine:
        """Start the engine thread (idempotent); raises if the device cannot be used."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="ddpm-engine", daemon=True)
                self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise RuntimeError(f"engine failed to start: {self._startup_error}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(
        self,
        spec: GenSpec,
        on_progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        preview: threading.Event | None = None,
        on_preview: PreviewFn | None = None,
        on_start: StartFn | None = None,
        trace_batches: bool = False,
    ) -> EngineJob:
        """Queue ``spec``; the returned job's ``done`` is set when it has finished. Setting
        ``cancel`` (or the job's own ``cancel``) stops it at the next step. While ``preview``
        is set, ``on_preview`` receives the current x0 estimate; ``on_start`` is called once,
        as its first network call begins (both on the engine thread: keep them cheap).
        ``trace_batches``: record the job's :class:`BatchSegment` list (tracing)."""
        job = (
            EngineJob(spec, on_progress)
            if cancel is None
            else EngineJob(spec, on_progress, cancel=cancel)
        )
        job.preview, job.on_preview, job.on_start = preview, on_preview, on_start
        if trace_batches:
            job.segments = []
        with self._cond:
            if self._stop:
                raise RuntimeError("engine stopped")
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def loaded(self) -> list[str]:
        """The checkpoints in the model cache (``name@version/ema|model``)."""
        return list(self._loaded_refs.values())

    def active_jobs(self) -> int:
        return len(self._active) + len(self._pending)

    def alive(self, within: float) -> bool:
        """Whether the engine thread made progress in the last ``within`` seconds (or has
        nothing to do): a wedged engine stops renewing its jobs' leases."""
        busy = bool(self._rows or self._pending)
        return not busy or time.monotonic() - self.last_beat < within

    def take_batch_sizes(self) -> list[int]:
        """Batch sizes recorded since the last call (for the shared metrics)."""
        with self._cond:
            out, self._unflushed = self._unflushed, []
        return out

    # -- engine thread ----------------------------------------------------------------------
    def _main(self) -> None:
        try:
            if self.threads:
                torch.set_num_threads(self.threads)
            self.device = resolve_device(self.device_spec)
            if self.device.type == "cuda":
                if self.device.index is None:  # set_device refuses a device without an index
                    self.device = torch.device("cuda", torch.cuda.current_device())
                torch.cuda.set_device(self.device)
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        log_event(log, "engine started", device=str(self.device), max_batch=self.max_batch)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._pending and not self._rows and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        break
                    new, self._pending = self._pending, []
                self.last_beat = time.monotonic()
                try:
                    for job in new:
                        self._admit(job)
                    self._reap_canceled()
                    if self._rows:
                        self._step_once()
                except Exception as exc:  # noqa: BLE001 - never let the engine thread die
                    log_event(log, "engine error", logging.ERROR, error=repr(exc))
                    for job in list(self._active):
                        self._finish(job, "failed", RunFailure("EngineError", repr(exc)))
        for job in self._active + self._pending:
            self._finish(job, "interrupted", RunFailure("WorkerShutdown", "the worker stopped"))

    def _model_key(self, spec: GenSpec) -> tuple:
        """The cache key of the spec's model: its directory's identity (a re-created directory
        is a different checkpoint), looked up at most once a second per directory: versions
        are immutable, and a stat per admitted job costs the engine thread a GIL round trip."""
        now = time.monotonic()
        seen = self._dir_ids.get(spec.checkpoint_path)
        if seen is None or now - seen[0] > 1.0:
            st = Path(spec.checkpoint_path).stat()
            seen = self._dir_ids[spec.checkpoint_path] = (now, (st.st_ino, st.st_mtime_ns))
            if len(self._dir_ids) > 1024:
                self._dir_ids.clear()
        return (spec.checkpoint_path, *seen[1], spec.use_ema)

    def _model(self, spec: GenSpec) -> tuple[tuple, Checkpoint]:
        key = self._model_key(spec)
        if key in self._cache:
            self._cache.move_to_end(key)
            return key, self._cache[key]
        ckpt = load_checkpoint(
            spec.checkpoint_path,
            use_ema=spec.use_ema,
            device=self.device,
            **self.model_limits,
        )
        net = FastDenoiser(ckpt.model, self.fast)
        started = time.monotonic()
        rates = self._tune(key, ckpt, net, spec.checkpoint_ref)  # cached only once tuned
        self._cache[key] = ckpt
        self._nets[key] = net
        log_event(
            log,
            "model loaded",
            checkpoint=spec.checkpoint_ref,
            device=str(self.device),
            precision=self._precision[key].name,
            precision_why=self._precision[key].why,
            batch_limit=self._batch_limit[key],
            rows_per_s={b: round(r, 1) for b, r in rates.items()},
            tune_seconds=round(time.monotonic() - started, 2),
            channels_last=self.fast.channels_last,
            compile=self.fast.compile,
        )
        self._loaded_refs[key] = f"{spec.checkpoint_ref}/{'ema' if spec.use_ema else 'model'}"
        in_use = {r.job._key for r in self._rows}
        while len(self._cache) > self.cache_size:
            old = next((k for k in self._cache if k not in in_use and k != key), None)
            if old is None:
                break
            del self._cache[old]
            self._nets.pop(old, None)
            self._batch_limit.pop(old, None)
            self._precision.pop(old, None)
            self._loaded_refs.pop(old, None)
        return key, ckpt

    def _tune(self, key: tuple, ckpt: Checkpoint, net: FastDenoiser, ref: str) -> dict:
        """Measure the model's precision and rows per call; returns rows/s per batch size.

        The precision first, then (CUDA) the largest batch that fits in memory, both on
        the eager network (a compiled one would compile a graph per batch size tried),
        then the throughput knee through ``net`` under that precision: with compile on,
        this compiles every bucket a batch up to the knee can use, so the compile time
        is spent here, at load or warm-up, not in a job."""
        cfg, dev = ckpt.config, self.device
        assert dev is not None
        shape = (cfg.channels, cfg.image_size, cfg.image_size)
        null = getattr(ckpt.model, "null_label", None)
        cl = self.fast.channels_last
        # The default probe batch, whatever max_batch is: ``ddpm sample`` measures alike.
        precision = model_precision(self.autocast, ckpt.model, shape, dev, null, cl)
        with autocast_for(dev, precision.dtype):
            memory = probe_max_batch(ckpt.model, shape, dev, self.max_batch, key=ref)
        forward = model_forward(net, shape, dev, null)
        knee, rates = throughput_knee(
            lambda b: forward(b, precision.dtype), dev, memory, self.knee_fraction
        )
        self._precision[key] = precision
        self._batch_limit[key] = knee
        return rates

    def precision(self, key: tuple | None) -> str:
        """The precision the model of cache key ``key`` runs in (fp32 | bf16)."""
        p = self._precision.get(key) if key is not None else None
        return p.name if p else "fp32"

    def warm(self, checkpoint_path: str, checkpoint_ref: str, use_ema: bool = True) -> None:
        """Load and tune a checkpoint's model now (blocks until done), so that the first
        job that uses it does not wait for the load, the measurements or compilation."""
        fields = {name: default for name, default in engine_fields(GENERATE_OPTIONS)}
        fields |= {"count": 1, "steps": 1, "seed": 0, "use_ema": use_ema}
        spec = GenSpec(
            job_id="warm-up",
            checkpoint_path=checkpoint_path,
            checkpoint_ref=checkpoint_ref,
            **fields,
        )
        job = self.submit(spec)
        job.wait()
        if job.status != "succeeded":
            err = job.error
            raise RuntimeError(
                f"warm-up of {checkpoint_ref} failed: {err.message if err else job.status}"
            )

    def _table(self, key: tuple, ckpt: Checkpoint, spec: GenSpec) -> StepTable:
        """The job's step table, built once per (model, steps, sampler, eta): building one
        respaces the whole schedule, which on the engine thread would hold up every batch."""
        tkey = (key, spec.steps, spec.sampler, spec.eta)
        table = self._tables.get(tkey)
        if table is None:
            if len(self._tables) >= 256:
                self._tables.clear()
            table = self._tables[tkey] = step_table_for(ckpt, spec.steps, spec.sampler, spec.eta)
        return table

    def _admit(self, job: EngineJob) -> None:
        spec = job.spec
        if job.cancel.is_set():
            self._finish(job, "canceled")
            return
        try:
            key, ckpt = self._model(spec)
            cfg = ckpt.config
            table = self._table(key, ckpt, spec)
            if spec.label is not None:
                check_labels(ckpt, torch.tensor([spec.label]))
            scale = (
                cfg.default_guidance_scale if spec.guidance_scale is None else spec.guidance_scale
            )
            shape = (cfg.channels, cfg.image_size, cfg.image_size)
            rows = []
            for i in range(spec.count):
                rng = ImageRNG(spec.seed + i, self.device)
                rows.append(_Row(job, i, rng, table, rng.initial(shape), spec.label, float(scale)))
        except Exception as exc:  # noqa: BLE001 - the job fails alone
            self._finish(job, "failed", RunFailure(type(exc).__name__, str(exc)))
            return
        total = len(table)
        job._ckpt, job._key = ckpt, key
        job.precision = self.precision(key)
        job._outputs = [None] * spec.count
        job._frames = [[] for _ in range(spec.count)]
        if spec.trajectory_frames > 0:
            n = min(spec.trajectory_frames, total)
            job._frame_steps = (
                frozenset(int(round(1 + j * (total - 1) / (n - 1))) for j in range(n))
                if n > 1
                else frozenset({total})
            )
        job._total_steps = total * spec.count
        job._rows_left = spec.count
        job.status = "running"
        self._active.append(job)
        self._rows.extend(rows)

    def _reap_canceled(self) -> None:
        for job in [j for j in self._active if j.cancel.is_set()]:
            self._finish(job, "canceled")

    def _finish(self, job: EngineJob, status: str, error: RunFailure | None = None) -> None:
        if job.done.is_set():
            return
        self._rows = [r for r in self._rows if r.job is not job]
        if job in self._active:
            self._active.remove(job)
        job.status = status
        job.error = error
        if status == "succeeded":
            job.images = torch.stack(job._outputs)  # type: ignore[arg-type]
            job.pixels = to_uint8(job.images)
            if job._frame_steps:
                n = len(job._frames[0])
                job.frames = [torch.stack([fr[j] for fr in job._frames]) for j in range(n)]
                job.frame_pixels = [to_uint8(f) for f in job.frames]
        job._ckpt = None
        job._outputs, job._frames, job._x0 = [], [], {}
        job.done.set()

    def _step_once(self) -> None:
        batch = next_batch(
            self._rows,
            lambda key: self._batch_limit.get(key, self.max_batch),
            time.monotonic(),
            self.starve_after,
        )
        self._run_or_split(batch[0].job._key, batch)

    def _run_or_split(self, key: tuple, batch: list[_Row]) -> int:
        """One step of ``batch``; what fails is retried in parts, so only what must fails.

        Out of memory: the rows run in two halves (recursively), so only a job one row
        of which cannot run alone fails, and the model's batch limit comes down to the
        largest part that ran (until the model is loaded again). Any other error: the
        rows run job by job and the job that fails alone fails. A retried row gets the
        same noise again (its stream is rewound), so splitting never changes an image.
        Returns the largest number of rows that ran in one call (0: none ran).
        """
        marks = [r.rng.mark() for r in batch]
        try:
            self._run(batch)
            return len(batch)
        except torch.OutOfMemoryError as exc:
            oom, error = True, RunFailure("OutOfMemory", str(exc))
            trace = traceback.format_exc(limit=3)
        except Exception as exc:  # noqa: BLE001
            oom, error = False, RunFailure(type(exc).__name__, str(exc))
            trace = traceback.format_exc(limit=3)
        # Out of the except block: the failed attempt's tensors (held by the traceback's
        # frames) are free now, before the memory is handed back and the parts run.
        for r, mark in zip(batch, marks, strict=True):
            r.rng.rewind(mark)
        jobs = list(dict.fromkeys(r.job for r in batch))
        if oom:
            self._release_memory()
            if len(batch) > 1:
                half = (len(batch) + 1) // 2
                ran = 0
                for part in (batch[:half], batch[half:]):
                    part = [r for r in part if not r.job.done.is_set()]
                    if part:
                        ran = max(ran, self._run_or_split(key, part))
                if ran:
                    limit = min(self._batch_limit.get(key, self.max_batch), ran)
                    self._batch_limit[key] = limit
                log_event(
                    log,
                    "out of memory: batch split",
                    logging.WARNING,
                    batch=len(batch),
                    largest_that_ran=ran,
                    batch_limit=self._batch_limit.get(key, self.max_batch),
                    jobs=len(jobs),
                )
                return ran
        if len(jobs) == 1:
            self._fail_from(jobs[0], error, trace)
            return 0
        ran = 0
        for job in jobs:  # retry job by job, so that only the job that cannot run fails
            if not job.done.is_set():
                ran = max(ran, self._run_or_split(key, [r for r in batch if r.job is job]))
        return ran

    def _release_memory(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _fail_from(self, job: EngineJob, error: RunFailure, trace: str = "") -> None:
        log_event(
            log,
            "job failed in the engine",
            logging.WARNING,
            job_id=job.spec.job_id,
            error=f"{error.type}: {error.message}",
            trace=trace,
        )
        self._finish(job, "failed", error)

    def _run(self, batch: list[_Row]) -> None:
        """One network call for ``batch`` and each row's own update."""
        model = self._nets[batch[0].job._key]  # type: ignore[index]
        dev = self.device
        jobs_in = list(dict.fromkeys(r.job for r in batch))
        self._mark_started(jobs_in)
        call_start = time.time()
        x = torch.stack([r.x for r in batch])
        t = torch.stack([r.table.timesteps[r.k] for r in batch]).to(dev)
        null = getattr(model, "null_label", None)
        y = None
        if null is not None:
            y = torch.tensor([null if r.label is None else r.label for r in batch], device=dev)
        scales = [1.0 if r.label is None else r.scale for r in batch]
        with autocast_for(dev, self._precision[batch[0].job._key].dtype):  # type: ignore[index, arg-type]
            eps = guided_eps(model, x, t, y, scales)
        coefs = stack_coefs([r.table.coefs[r.k] for r in batch])
        noisy = [r.table.has_noise(r.k) for r in batch]
        noise = None
        if any(noisy):
            zeros = torch.zeros_like(batch[0].x)
            noise = torch.stack(
                [r.rng.noise(r.x.shape) if n else zeros for r, n in zip(batch, noisy, strict=True)]
            )
        history = stack_history([r.history for r in batch], batch[0].x)
        x_new, x0_hat = denoise_step(x, eps, coefs, noise, history)
        # Reading finiteness back waits for the device: do it every few calls and whenever a
        # row finishes, not every step (a NaN stays NaN until then).
        self._calls += 1
        if self._calls % self.finite_check_every == 0 or any(
            r.k + 1 == len(r.table) for r in batch
        ):
            finite = torch.isfinite(x_new).flatten(1).all(1).tolist()
        else:
            finite = [True] * len(batch)
        # Bookkeeping after the call succeeded.
        size = len(batch)
        self.batch_sizes.append(size)
        with self._cond:
            self._unflushed.append(size)
        call_end, key = time.time(), 0
        for job in jobs_in:
            job.network_calls += 1
            job.max_batch = max(job.max_batch, size)
            if len(jobs_in) > 1:
                job.shared_calls += 1
            if len(job.batch_sizes) < 4096:
                job.batch_sizes.append(size)
            if job.segments is not None:
                key = key or hash(tuple(id(j) for j in jobs_in)) or 1
                _extend_segment(job, call_start, call_end, size, jobs_in, key)
        failed: set[int] = set()
        for i, r in enumerate(batch):
            job = r.job
            if id(job) in failed or job.done.is_set():
                continue
            if not finite[i]:
                failed.add(id(job))
                self._finish(
                    job,
                    "failed",
                    RunFailure("NonFinite", f"image {r.index} became NaN/inf at step {r.k + 1}"),
                )
                continue
            r.x = x_new[i]
            if r.table.history:
                r.history = (x0_hat[i], *r.history)[: r.table.history]
            r.k += 1
            job._steps_done += 1
            if r.k in job._frame_steps:
                job._frames[r.index].append(x_new[i].cpu())
            if r.k == len(r.table):
                job._outputs[r.index] = x_new[i].cpu()
                job._rows_left -= 1
                self._rows.remove(r)
        now = time.monotonic()
        for job in jobs_in:
            if job.done.is_set():
                continue
            finished = job._rows_left == 0
            if job.on_progress is not None and (
                finished or now - job._last_progress >= self.progress_interval
            ):
                job._last_progress = now
                steps = job._total_steps // max(job.spec.count, 1)
                frac = job._steps_done / max(job._total_steps, 1)
                step = math.floor(frac * steps + 1e-9)
                _report("progress update failed", job, job.on_progress, step, steps, round(frac, 4))
            if finished:
                self._finish(job, "succeeded")
        self._previews(batch, jobs_in, x0_hat, now)

    def _mark_started(self, jobs: list[EngineJob]) -> None:
        """Record the start of each job's first network call (the end of its wait)."""
        for job in jobs:
            if job.started_at is not None:
                continue
            job.started_at = time.time()
            if job.on_start is not None:
                _report("start report failed", job, job.on_start, job.started_at)

    def _previews(
        self, batch: list[_Row], jobs: list[EngineJob], x0_hat: torch.Tensor, now: float
    ) -> None:
        """Hand each watched job its rows' x0 estimate, at most every ``preview_interval``.
        A job nobody watches costs one flag check."""
        for job in jobs:
            if job.on_preview is None or job.preview is None or job.done.is_set():
                continue
            if not job.preview.is_set() or now - job._last_preview < self.preview_interval:
                continue
            job._last_preview = now
            mine = [(i, r.index) for i, r in enumerate(batch) if r.job is job]
            mine = [(i, idx) for i, idx in mine if idx < PREVIEW_ROWS]
            if mine:  # one device-to-host copy for the job's rows in this batch
                rows = x0_hat[torch.tensor([i for i, _ in mine], device=x0_hat.device)]
                for (_, idx), x0 in zip(mine, rows.float().cpu(), strict=True):
                    job._x0[idx] = x0
            if not job._x0:
                continue
            # Rows that have not run yet (the batch was full) show as mid-grey.
            blank = torch.zeros_like(next(iter(job._x0.values())))
            x0 = torch.stack(
                [job._x0.get(i, blank) for i in range(min(job.spec.count, PREVIEW_ROWS))]
            )
            steps = job._total_steps // max(job.spec.count, 1)
            frac = job._steps_done / max(job._total_steps, 1)
            _report(
                "preview failed", job, job.on_preview, math.floor(frac * steps + 1e-9), steps, x0
            )

    def info(self) -> dict[str, Any]:
        models = {
            ref: {"precision": self.precision(key), "batch_limit": self._batch_limit.get(key)}
            for key, ref in list(self._loaded_refs.items())
        }
        info = {
            "device": str(self.device) if self.device else self.device_spec,
            "loaded": self.loaded(),
            "models": models,
            "active_jobs": self.active_jobs(),
            "rows": len(self._rows),
        }
        dev = self.device
        if dev is not None and dev.type == "cuda":
            # The caching allocator's own counters: no device sync (ddpm_device_memory_bytes).
            info["cuda_memory"] = {
                "allocated": torch.cuda.memory_allocated(dev),
                "reserved": torch.cuda.memory_reserved(dev),
            }
        return info


def _report(failure: str, job: EngineJob, callback: Callable[..., Any], *args: Any) -> None:
    """Call one of a job's reporting callbacks; a failure is logged as ``failure`` and never
    reaches the engine loop (progress, start and previews are best effort)."""
    try:
        callback(*args)
    except Exception as exc:  # noqa: BLE001 - reporting is best effort
        log_event(log, failure, logging.WARNING, job_id=job.spec.job_id, error=str(exc))
