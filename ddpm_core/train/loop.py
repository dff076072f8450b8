"""The training loop, shaped as improved-diffusion's ``TrainLoop``.

:class:`TrainLoop` builds a run from its :class:`~ddpm_core.config.train.TrainConfig`
(data, schedule, network, EMA, optimizer, resumed state) and :meth:`TrainLoop.run_loop`
runs it: every :meth:`~TrainLoop.run_step` draws the step's batch, runs
:meth:`~TrainLoop.forward_backward` over its micro-batches and :meth:`~TrainLoop.optimize`,
then updates the EMA and reports (:meth:`~TrainLoop.log_progress`); previews
(:meth:`~TrainLoop.sample_grid`) and checkpoints (:meth:`~TrainLoop.save`) come at their
intervals. :func:`train` is the one-call form.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ddpm_core.checkpoint import Checkpoint, CheckpointConfig, non_finite_tensors, save_checkpoint
from ddpm_core.config.paths import scrub_paths
from ddpm_core.config.train import TrainConfig, build_unet_config, public_name, public_train_config
from ddpm_core.data import ImageDataset, load_dataset
from ddpm_core.diffusion import diffusion_loss, q_sample, training_target
from ddpm_core.distributed import DistContext
from ddpm_core.distributed import setup as setup_distributed
from ddpm_core.ema import EMA
from ddpm_core.images import make_grid, png_bytes
from ddpm_core.pipeline import generate
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.train.reports import (
    MAX_NONFINITE_STEPS,
    ProgressFn,
    Throughput,
    TrainingDiverged,
    TrainProgress,
    TrainResult,
)
from ddpm_core.train.state import Counters, load_state, restore_state, save_state, seed_rngs
from ddpm_core.train.steps import Batch, draw_batch, lr_at
from ddpm_core.unet import UNet

__all__ = ["TrainLoop", "train", "command_line"]


def _check_device(cfg: TrainConfig, dist: DistContext) -> None:
    """ValueError for settings this device or process count cannot run."""
    device = dist.device
    if dist.world > cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} is smaller than {dist.world} processes")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs a CUDA device; use bf16 or no on CPU")
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this CUDA device does not support bf16")


def _dataset(cfg: TrainConfig, dataset: ImageDataset | None) -> ImageDataset:
    """The run's data (``dataset``, or ``cfg.dataset`` loaded), checked against ``cfg``."""
    ds = dataset
    if ds is None:
        ds = load_dataset(
            cfg.dataset, cfg.image_size, cfg.channels, cfg.class_cond, cfg.random_flip
        )
    if ds.image_size != cfg.image_size or ds.channels != cfg.channels:
        raise ValueError(
            f"dataset images are {ds.channels}x{ds.image_size}px, config says "
            f"{cfg.channels}x{cfg.image_size}px"
        )
    if cfg.class_cond and not ds.num_classes:
        raise ValueError("class-conditional training needs a labeled dataset")
    return ds


def _autocast(device: torch.device, precision: str) -> AbstractContextManager:
    if precision == "no":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class TrainLoop:
    """One training run: built from ``cfg``, run by :meth:`run_loop`.

    ``progress(TrainProgress)`` runs after every step; a truthy return, like a truthy
    ``should_stop()``, ends training after that step, and the state is still saved.
    ``command``/``job_id`` are recorded in meta.json as provenance. ``dataset`` replaces
    loading ``cfg.dataset`` (e.g. a dataset already in memory). See :func:`train`.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        command: str | None = None,
        job_id: str | None = None,
        dataset: ImageDataset | None = None,
    ) -> None:
        self.cfg, self.progress, self.should_stop = cfg, progress, should_stop
        self.command, self.job_id = command, job_id
        # Data parallel under torchrun (see ddpm_core.distributed); one process otherwise.
        self.dist = setup_distributed(cfg.device)
        self.device = self.dist.device
        _check_device(cfg, self.dist)
        self.out = Path(cfg.out)
        saved = None
        if cfg.resume_from:
            # Rank 0 reads the state and sends it: other hosts need no copy of the files.
            saved = self.dist.tensors_from_main(lambda: load_state(Path(cfg.resume_from)))
        self.ds = _dataset(cfg, dataset)
        self.num_classes = self.ds.num_classes if cfg.class_cond else None
        self.schedule = (
            NoiseSchedule.linear(cfg.timesteps)
            if cfg.schedule == "linear"
            else NoiseSchedule.cosine(cfg.timesteps)
        )
        self.ckpt_cfg = self._checkpoint_config()
        self._build_networks()
        counters = Counters()
        if saved is not None:
            counters = restore_state(saved, self.model, self.opt, self.ema, self.scaler)
            if counters.step > cfg.steps:
                raise ValueError(f"resume state is at step {counters.step}, past steps={cfg.steps}")
        self.step, self.smooth = counters.step, counters.smooth
        self.skipped, self.prev_elapsed = counters.skipped_steps, counters.elapsed_s
        self.curve = counters.curve
        self.dist.seed_dropout(cfg.seed, self.step)
        self.ema.to(self.device)
        wrapped = self.dist.wrap(self.model)
        self.net = torch.compile(wrapped) if cfg.compile else wrapped
        self.check_weights(self.step, with_ema=True)
        self.losses: list[float] = []
        self.nonfinite_run = 0  # consecutive steps whose loss was not finite
        self.last_saved = -1
        self.measured: dict | None = None  # the measured sampling defaults, for meta.json
        self.started = time.perf_counter()
        self.throughput = Throughput(self.started)

    # -- building ---------------------------------------------------------------------

    def _checkpoint_config(self) -> CheckpointConfig:
        cfg, conditional = self.cfg, bool(self.num_classes)
        return CheckpointConfig(
            unet=build_unet_config(cfg, self.num_classes),
            schedule=self.schedule.to_config(),
            variance_type="fixed_small",
            prediction_type=cfg.prediction_type,
            default_steps=cfg.default_steps,
            default_sampler=cfg.default_sampler,
            default_eta=cfg.default_eta,
            default_guidance_scale=cfg.guidance_scale if conditional else 1.0,
            class_names=self.ds.class_names if conditional else None,
        )

    def _build_networks(self) -> None:
        """The model, its EMA (and a second network to sample it), optimizer and scaler."""
        cfg, unet_cfg = self.cfg, self.ckpt_cfg.unet
        seed_rngs(cfg.seed)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = UNet(unet_cfg).to(self.device).to(memory_format=self.memory_format)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup)
        self.ema_model = UNet(unet_cfg).to(self.device)  # holds the EMA weights for previews
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None

    # -- the loop ---------------------------------------------------------------------

    def run_loop(self) -> TrainResult:
        """Train from the current step to ``cfg.steps`` (or a stop); save; the result."""
        cfg = self.cfg
        self.model.train()
        self.started = time.perf_counter()  # the time to build the run is not training time
        self.throughput = Throughput(self.started)
        stopped = False
        while self.step < cfg.steps:
            info = self.run_step()
            if self._after_step(info):  # a stop on any rank stops them all after this step
                stopped = True
                break
        final_loss = self.smooth.mean
        if not stopped and self.dist.is_main and cfg.measure_defaults != "off":
            self.measure_defaults()
        if self.last_saved != self.step or self.measured is not None:
            self.save(self.step, final_loss)
        self.dist.barrier()  # the checkpoint exists when any rank returns
        self.dist.close()
        return TrainResult(
            checkpoint=self.out,
            step=self.step,
            total_steps=cfg.steps,
            final_loss=final_loss,
            losses=self.losses,
            skipped_steps=self.skipped,
            stopped=stopped,
            elapsed_s=self._elapsed(),
            device=str(self.device),
        )

    def run_step(self) -> TrainProgress:
        """One optimizer step (DDPM Algorithm 1, lines 2-5) and what it reports."""
        lr = lr_at(self.cfg, self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        batch = draw_batch(self.cfg, self.ds, self.step)
        self.opt.zero_grad(set_to_none=True)
        step_loss, loss_finite = self.forward_backward(batch)
        applied = loss_finite and self.optimize()
        if applied:
            self.check_weights(self.step + 1)  # e.g. an infinite weight decay: stop before the EMA
            if self.dist.is_main:
                self.ema.update(self.model)
            self.smooth.update(step_loss)
            self.losses.append(step_loss)
        else:
            self.skipped += 1
            self.opt.zero_grad(set_to_none=True)
            self.losses.append(float("nan"))
        self.nonfinite_run = 0 if loss_finite else self.nonfinite_run + 1
        if self.nonfinite_run > MAX_NONFINITE_STEPS:
            raise TrainingDiverged(
                f"training diverged: the loss was not finite for {self.nonfinite_run} "
                f"consecutive steps (up to step {self.step + 1}); nothing more is saved. "
                "Check data, lr, precision."
            )
        self.step += 1
        self.curve.add(self.step, self.smooth.mean, lr)
        return self.log_progress(lr)

    def compute_loss(self, batch: Batch, rows: slice) -> torch.Tensor:
        """The loss of ``rows`` of ``batch``: L_simple (DDPM Eq. 14) on x_t of Eq. 4, with
        the target of ``prediction_type``; labels dropped to the null class w.p. p_uncond."""
        cfg, device, fmt = self.cfg, self.device, self.memory_format
        x0 = batch.x0[rows].to(device, non_blocking=True).contiguous(memory_format=fmt)
        noise = batch.noise[rows].to(device).contiguous(memory_format=fmt)
        t = batch.t[rows].to(device)
        labels = None
        if self.num_classes:
            # Classifier-free guidance training: drop the label to the null class w.p. p_uncond.
            y = batch.y[rows]
            labels = torch.where(batch.drop[rows], torch.full_like(y, self.model.null_label), y)
            labels = labels.to(device)
        x_t = q_sample(self.schedule, x0, t, noise)
        target = training_target(cfg.prediction_type, self.schedule, x0, t, noise)
        with _autocast(device, cfg.precision):
            prediction = self.net(x_t, t, labels)
        return diffusion_loss(prediction, target, cfg.loss)

    def forward_backward(self, batch: Batch) -> tuple[float, bool]:
        """Accumulate the gradients of every micro-batch (this rank's rows of each); the
        step's loss (of the global batch under torchrun) and whether it is finite."""
        cfg, dist = self.cfg, self.dist
        step_loss, finite = 0.0, True
        for m in range(cfg.accumulate):
            dist.sync_grads(self.net, m == cfg.accumulate - 1)
            rows = dist.shard(m * cfg.batch_size, cfg.batch_size)  # this rank's rows
            loss = self.compute_loss(batch, rows) / cfg.accumulate
            value = float(loss.detach())
            if not math.isfinite(value):
                finite = False
                if not dist.active:  # ranks must all run the same collectives
                    break
            step_loss += value
            loss = loss * dist.grad_weight(cfg.batch_size)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if dist.active:  # every rank decides from the loss of the whole global batch
            step_loss = dist.global_loss(step_loss, cfg.batch_size)
            finite = math.isfinite(step_loss)
        return step_loss, finite

    def optimize(self) -> bool:
        """Clip and apply the accumulated gradients; False when they were not finite and
        the step was skipped."""
        scaler, params = self.scaler, self.model.parameters
        if scaler is not None:
            scaler.unscale_(self.opt)
        if self.cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params(), self.cfg.grad_clip)
        else:
            norm = torch.stack([p.grad.norm() for p in params() if p.grad is not None]).norm()
        if scaler is not None:
            # GradScaler skips the update itself when the gradients overflowed.
            scale_before = scaler.get_scale()
            scaler.step(self.opt)
            scaler.update()
            return not scaler.get_scale() < scale_before
        if torch.isfinite(norm):
            self.opt.step()
            return True
        return False

    def log_progress(self, lr: float) -> TrainProgress:
        """The report of the step just taken (at learning rate ``lr``)."""
        now = time.perf_counter()
        return TrainProgress(
            step=self.step,
            total_steps=self.cfg.steps,
            loss=self.smooth.mean,
            loss_raw=self.losses[-1],
            lr=lr,
            images_per_sec=self.throughput.update(self.cfg.batch_size * self.cfg.accumulate, now),
            skipped_steps=self.skipped,
            elapsed_s=self.prev_elapsed + now - self.started,
        )

    def _after_step(self, info: TrainProgress) -> bool:
        """Preview, save and report at their intervals; whether to stop (on every rank)."""
        cfg, step, main = self.cfg, self.step, self.dist.is_main
        if main and cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.steps:
            png = self.sample_grid()
            # Previews go next to the checkpoint: its directory is replaced on every save.
            path = self.out.parent / f"{self.out.name}.samples" / f"step{step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
            info.sample_path, info.sample_png = str(path), png
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            info.checkpoint_path = str(self.save(step, info.loss))
            self.last_saved = step
        stopped = bool(main and self.progress is not None and self.progress(info))
        if self.should_stop is not None and self.should_stop():
            stopped = True
        return self.dist.any(stopped)

    # -- weights, previews, checkpoints ----------------------------------------------

    def check_weights(self, step: int, with_ema: bool = False) -> None:
        """TrainingDiverged when the raw (or EMA) weights hold a NaN or an infinity."""
        checked = [("weights", dict(self.model.named_parameters()))]
        if with_ema:
            checked.append(("EMA", self.ema.shadow))
        for which, tensors in checked:
            bad = non_finite_tensors(tensors)
            if bad:
                raise TrainingDiverged(
                    f"training diverged: the {which} became non-finite by step {step} "
                    f"(e.g. {bad[:3]}); nothing more is saved. Check lr, weight_decay, grad_clip."
                )

    def sample_grid(self) -> bytes:
        """PNG grid of ``sample_count`` samples of the EMA weights (seed 0; labels 0, 1, 2,
        ... when conditional, one class per column)."""
        ckpt_cfg, count = self.ckpt_cfg, self.cfg.sample_count
        self.ema.copy_to(self.ema_model)
        self.ema_model.eval()
        ck = Checkpoint(self.out, ckpt_cfg, {}, self.ema_model, "ema")
        labels, nrow = None, None
        if ckpt_cfg.num_classes:
            labels = [i % ckpt_cfg.num_classes for i in range(count)]
            nrow = ckpt_cfg.num_classes if count >= ckpt_cfg.num_classes else None
        images = generate(ck, count=count, seed=0, labels=labels)
        return png_bytes(make_grid(images, nrow=nrow))

    def measure_defaults(self) -> None:
        """Measure sampling settings on the EMA weights against the training images and
        make the cheapest good one the checkpoint's defaults (samples.png is drawn with
        them); the whole table goes to meta.json (``sampling_defaults``)."""
        from ddpm_core.measured_defaults import (
            fid_features,
            measure_defaults,
            reference_rows,
            with_measured_defaults,
        )

        cfg, ckpt_cfg = self.cfg, self.ckpt_cfg
        self.ema.copy_to(self.ema_model)
        self.ema_model.eval()
        ck = Checkpoint(self.out, ckpt_cfg, {}, self.ema_model, "ema")
        rows = reference_rows(len(self.ds))  # the reference: the training images
        data = self.ds.images(rows)
        labels = self.ds.labels[rows] if self.num_classes else None
        features, note = (
            fid_features(self.device) if cfg.measure_defaults == "fid" else (None, None)
        )
        table = measure_defaults(
            ck,
            data,
            labels,
            images=cfg.measure_images,
            seed=0,
            guidance=ckpt_cfg.default_guidance_scale,
            features=features,
            fid_note=note,
        )
        self.ckpt_cfg, self.measured = with_measured_defaults(ckpt_cfg, table)

    def _elapsed(self) -> float:
        return self.prev_elapsed + time.perf_counter() - self.started

    def _meta(self, step: int, loss: float, elapsed: float) -> dict:
        """meta.json: served as it is (GET /checkpoints), so names, never the server's paths."""
        cfg, device = self.cfg, self.device
        meta = {
            "dataset": self.ds.describe() | {"name": public_name(self.ds.name)},
            "training_steps": step,
            "total_steps": cfg.steps,
            "images_seen": step * cfg.batch_size * cfg.accumulate,
            "loss": loss,
            "skipped_steps": self.skipped,
            "train_config": public_train_config(cfg),
            "command": scrub_paths(self.command),
            "job_id": self.job_id,
            "device": str(device)
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "training_time_s": round(elapsed, 1),
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }
        if self.measured is not None:
            meta["sampling_defaults"] = self.measured
        # The curve the page draws again once the run's events are gone.
        meta["loss_curve"] = self.curve.through(step, loss, lr_at(cfg, max(step - 1, 0)))
        return meta | self.dist.meta()

    def save(self, step: int, loss: float) -> Path:
        """Write the checkpoint (weights, EMA, meta.json, samples.png) and its resumable
        state at ``cfg.out``; rank 0 alone writes. Never writes non-finite weights."""
        if not self.dist.is_main:
            return self.out
        self.check_weights(step, with_ema=True)
        elapsed = self._elapsed()
        png = self.sample_grid()
        meta = self._meta(step, loss, elapsed)
        counters = Counters(step, self.smooth, self.skipped, elapsed, self.curve)

        def state(tmp_dir: Path) -> None:
            save_state(tmp_dir, self.cfg, counters, self.model, self.opt, self.ema, self.scaler)

        ema = self.ema.state_dict()
        save_checkpoint(self.out, self.ckpt_cfg, self.model, ema, meta, png, True, extra=state)
        return self.out


def train(cfg: TrainConfig, progress: ProgressFn | None = None, **options: Any) -> TrainResult:
    """Train as ``cfg`` says and save a checkpoint directory at ``cfg.out``; ``options``
    are :class:`TrainLoop`'s (should_stop, command, job_id, dataset).

    ``progress(TrainProgress)`` runs after every step; a truthy return, like a
    truthy ``should_stop()``, ends training after that step, and the state is
    still saved. ``command``/``job_id`` are recorded in meta.json as provenance.
    ``dataset`` replaces loading ``cfg.dataset`` (e.g. a dataset already in memory).

    ``cfg.out`` is (re)written on every save, model + EMA + meta + samples.png,
    with the resumable state in ``cfg.out/train_state/``; an existing directory
    there is replaced. Previews of ``sample_every`` go to ``<out>.samples/``.
    Raises ValueError for unusable settings (e.g. fp16 without CUDA),
    :class:`~ddpm_core.data.DatasetError` (a ValueError) for unusable data, and
    :class:`TrainingDiverged` when the weights (raw or EMA) become non-finite or the
    loss stays non-finite for more than ``MAX_NONFINITE_STEPS`` steps in a row; weights
    with a NaN or an infinity are never saved. meta.json names the dataset and the
    directories, never their absolute paths.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this with the same ``cfg``:
    each computes its share of every global batch, and rank 0 alone calls ``progress``,
    keeps the EMA and writes checkpoints and previews (see :mod:`ddpm_core.distributed`).
    ``should_stop`` is asked on every rank; a stop on any of them stops all.
    """
    return TrainLoop(cfg, progress, **options).run_loop()


def command_line() -> str:
    """The running process's command line, for provenance."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""
