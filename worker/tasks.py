"""Celery task bodies: ``ddpm.generate`` (queue gen) and ``ddpm.train`` (queue train).

The job hash in Redis is the source of truth; Celery only delivers job ids.
``ddpm.generate`` is acked late and idempotent: a redelivered message whose job
already finished returns at once, and one whose job is running elsewhere (lease
held) waits for it; a dead runner's lease expires and the job runs again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from app.logs import log_event
from app.metrics import QUEUE_BUCKETS, RUN_BUCKETS
from app.queue import GENERATE_TASK, TRAIN_TASK
from app.queue import app as celery_app
from app.registry import NotFound, RegistryError
from app.schemas import TERMINAL

from .runtime import Runtime, get_runtime

__all__ = ["generate", "train"]

log = logging.getLogger("ddpm.worker")


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    queues: list[str] = []
    try:
        queues = sorted(sender.app.amqp.queues.consume_from or [])
    except Exception:  # noqa: BLE001 - best effort
        queues = [q for q in os.environ.get("DDPM_WORKER_QUEUES", "").split(",") if q]
    rt = get_runtime(getattr(sender, "hostname", None), queues)
    if "train" in queues:
        rt.hooks.append(_recover_training)
    if "gen" in queues:
        rt.engine()  # import torch and claim the device now, not in the first job
    rt.start_heartbeat()
    log_event(log, "worker ready", worker=rt.name, queues=",".join(queues))


def _recover_training(rt: Runtime) -> None:
    """Re-enqueue training jobs whose worker died (running, lease expired): training is
    acked on start, so nothing else would redeliver them. They resume from saved state."""
    store = rt.store
    for job_id in store.running("train"):
        doc = store.get(job_id)
        if doc is None or doc["status"] != "running" or store.lease_held(job_id):
            continue
        # One re-enqueue per lease period, whichever train worker sees it first.
        marker = store.job_key(job_id, "recovering")
        if not store.r.set(marker, rt.name, nx=True, ex=max(10, int(rt.settings.lease_ttl * 3))):
            continue
        celery_app.send_task(TRAIN_TASK, args=[job_id], task_id=job_id)
        log_event(log, "training job re-enqueued after its worker died", job_id=job_id)


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    get_runtime().shutdown()


class _Lease:
    """Holds the job lease while the job runs (refreshed by a background thread)."""

    def __init__(self, rt: Runtime, job_id: str) -> None:
        self.rt, self.job_id = rt, job_id
        self.owner = f"{rt.name}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    def acquire(self, kind: str) -> dict | None:
        """Wait for the lease; returns the job doc, or None when there is nothing to run."""
        store, ttl = self.rt.store, self.rt.settings.lease_ttl
        while True:
            doc = store.get(self.job_id)
            if doc is None or doc["status"] in TERMINAL:
                return None
            if store.acquire_lease(self.job_id, self.owner, ttl):
                self._t = threading.Thread(target=self._refresh, daemon=True)
                self._t.start()
                return doc
            time.sleep(min(1.0, ttl / 3))

    def _refresh(self) -> None:
        ttl = self.rt.settings.lease_ttl
        while not self._stop.wait(ttl / 3):
            with contextlib.suppress(Exception):  # the next refresh retries
                self.rt.store.acquire_lease(self.job_id, self.owner, ttl)

    def release(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self.rt.store.release_lease(self.job_id, self.owner)


def _fail(rt: Runtime, job_id: str, kind: str, type_: str, message: str) -> None:
    rt.store.finish(
        job_id, kind, "failed", error={"type": type_, "message": message}, finished_ts=time.time()
    )
    log_event(log, "job failed", logging.WARNING, job_id=job_id, error=f"{type_}: {message}")


def _record_times(rt: Runtime, doc: dict, started_ts: float) -> None:
    if doc.get("created_ts"):
        rt.store.observe("queue_seconds", max(0.0, started_ts - doc["created_ts"]), QUEUE_BUCKETS)
    rt.store.observe("run_seconds", time.time() - started_ts, RUN_BUCKETS)


def _run_leased(kind: str, job_id: str, body: Callable[[Runtime, str], str | None]) -> str | None:
    """Run ``body`` holding the job's lease; an unexpected error fails the job (and is
    re-raised for Celery's log). Nothing runs when the job is finished, canceled or gone."""
    rt = get_runtime()
    lease = _Lease(rt, job_id)
    if lease.acquire(kind) is None:
        log_event(log, "nothing to do (finished, canceled or expired)", job_id=job_id)
        return None
    try:
        return body(rt, job_id)
    except Exception as exc:
        _fail(rt, job_id, kind, type(exc).__name__, str(exc))
        raise
    finally:
        lease.release()


@celery_app.task(name=GENERATE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def generate(job_id: str) -> str | None:
    """Run generation job ``job_id`` through the engine and store its images."""
    return _run_leased("generate", job_id, _generate)


def _generate(rt: Runtime, job_id: str) -> str | None:
    from ddpm_core.images import gif_bytes, make_grid, png_bytes

    from .engine import GenSpec

    store = rt.store
    ok, doc = store.start(job_id, "generate", rt.name)
    if not ok or doc is None:
        return None
    started_ts = time.time()
    store.update(job_id, started_ts=started_ts)
    log_event(log, "job started", job_id=job_id, attempt=doc.get("attempts"), worker=rt.name)
    if store.cancel_requested(job_id):
        store.finish(
            job_id,
            "generate",
            "canceled",
            finished_ts=time.time(),
            error={"type": "Canceled", "message": "canceled before it started"},
        )
        return "canceled"
    req = doc["request"]
    try:
        ckpt = rt.registry.resolve(req["checkpoint"])
    except (NotFound, RegistryError) as exc:
        _fail(rt, job_id, "generate", "CheckpointNotFound", str(exc))
        return "failed"
    spec = GenSpec(
        job_id=job_id,
        checkpoint_path=str(ckpt.path),
        checkpoint_ref=ckpt.ref,
        count=int(req["count"]),
        seed=int(req["seed"]),
        steps=req.get("steps"),
        sampler=req.get("sampler"),
        eta=req.get("eta"),
        label=req.get("label"),
        guidance_scale=req.get("guidance_scale"),
        use_ema=bool(req.get("use_ema", True)),
        trajectory_frames=int(req.get("trajectory_frames") or 0),
    )

    monitor = rt.monitor()

    def on_progress(step: int, total: int, fraction: float) -> None:
        monitor.progress(job_id, {"step": step, "total": total, "fraction": fraction})

    try:
        job = rt.engine().submit(spec, on_progress)
    except Exception as exc:  # noqa: BLE001 - e.g. the device is unusable
        _fail(rt, job_id, "generate", "EngineError", str(exc))
        return "failed"
    monitor.watch(job_id, job.cancel)
    try:
        job.wait()
    finally:
        monitor.release(job_id)
    metrics = {
        "network_calls": job.network_calls,
        "shared_calls": job.shared_calls,
        "max_batch_size": job.max_batch,
        "mean_batch_size": round(sum(job.batch_sizes) / len(job.batch_sizes), 3)
        if job.batch_sizes
        else None,
        "worker": rt.name,
    }
    if job.status == "canceled":
        store.finish(
            job_id,
            "generate",
            "canceled",
            finished_ts=time.time(),
            metrics=metrics,
            error={"type": "Canceled", "message": "canceled while running"},
        )
        log_event(log, "job canceled", job_id=job_id)
        return "canceled"
    if job.status != "succeeded" or job.images is None:
        err = job.error
        _fail(
            rt, job_id, "generate", err.type if err else "Error", err.message if err else "unknown"
        )
        return "failed"
    results = rt.results(doc.get("result_store") or "disk")
    images = []
    try:
        for i in range(spec.count):
            results.put(job_id, f"{i}.png", png_bytes(job.images[i]))
            images.append(
                {"index": i, "seed": spec.seed + i, "url": f"/jobs/{job_id}/images/{i}.png"}
            )
        results.put(job_id, "grid.png", png_bytes(make_grid(job.images)))
        result: dict[str, Any] = {"images": images, "grid_url": f"/jobs/{job_id}/grid.png"}
        if job.frames:
            results.put(job_id, "trajectory.gif", gif_bytes([make_grid(f) for f in job.frames]))
            result["trajectory_url"] = f"/jobs/{job_id}/trajectory.gif"
    except Exception as exc:  # noqa: BLE001 - e.g. disk full, Redis out of memory
        _fail(rt, job_id, "generate", "ResultStoreError", str(exc))
        return "failed"
    finished = time.time()
    metrics["run_seconds"] = round(finished - started_ts, 4)
    if store.finish(
        job_id, "generate", "succeeded", result=result, metrics=metrics, finished_ts=finished
    ):
        store.incr_stat("images_generated", spec.count)
        _record_times(rt, doc, started_ts)
    log_event(
        log,
        "job succeeded",
        job_id=job_id,
        images=spec.count,
        run_s=metrics["run_seconds"],
        max_batch=job.max_batch,
    )
    return "succeeded"


@celery_app.task(name=TRAIN_TASK, acks_late=False, ignore_result=True)
def train(job_id: str) -> str | None:
    """Run training job ``job_id`` and publish the result as a new checkpoint version."""
    return _run_leased("train", job_id, _train)


def _train(rt: Runtime, job_id: str) -> str | None:
    store = rt.store
    ok, doc = store.start(job_id, "train", rt.name)
    if not ok or doc is None:
        return None
    started_ts = time.time()
    store.update(job_id, started_ts=started_ts)
    req = doc["request"]
    log_event(log, "training started", job_id=job_id, checkpoint=req["name"])
    try:
        from ddpm_core.train import STATE_DIR, TrainConfig
        from ddpm_core.train import train as run_training
    except ImportError as exc:
        _fail(rt, job_id, "train", "TrainingUnavailable", str(exc))
        return "failed"
    out = Path(rt.settings.data_dir).resolve() / "runs" / job_id
    options = dict(req.get("options") or {})
    for forbidden in ("out", "resume_from"):
        options.pop(forbidden, None)
    options["device"] = rt.settings.device
    if options.get("dataset", "digits") != "digits":
        # The API admits only folder names; they live under DATA_DIR/datasets.
        options["dataset"] = str(
            Path(rt.settings.data_dir).resolve() / "datasets" / options["dataset"]
        )
    steps = options.get("steps", 1000)
    if isinstance(steps, int):
        options.setdefault("save_every", max(100, steps // 10))  # resumable state
    resume = None
    if (out / STATE_DIR / "state.json").exists():
        resume = str(out)  # a previous attempt of this job left resumable state
    elif req.get("resume_from"):
        try:
            src = rt.registry.resolve(req["resume_from"]).path
        except RegistryError as exc:
            _fail(rt, job_id, "train", "CheckpointNotFound", str(exc))
            return "failed"
        if (src / STATE_DIR / "state.json").exists():
            resume = str(src)
    log_event(log, "training configured", job_id=job_id, resume_from=resume or "")
    try:
        cfg = TrainConfig.from_dict(options | {"out": str(out), "resume_from": resume})
    except (TypeError, ValueError) as exc:
        _fail(rt, job_id, "train", "InvalidTrainConfig", str(exc))
        return "failed"
    last = [0.0]
    interval = max(rt.settings.progress_interval, 0.5)

    def progress(p: Any) -> bool:
        now = time.monotonic()
        if now - last[0] >= interval or p.step == p.total_steps:
            last[0] = now
            loss = p.loss if math.isfinite(p.loss) else None
            data = {
                "step": p.step,
                "total": p.total_steps,
                "fraction": round(p.step / max(p.total_steps, 1), 4),
                "loss": loss,
                "lr": p.lr,
                "images_per_sec": round(p.images_per_sec, 2),
            }
            store.update(job_id, progress={k: data[k] for k in ("step", "total", "fraction")})
            store.add_event(job_id, "progress", data)
            return store.cancel_requested(job_id)
        return False

    try:
        result = run_training(
            cfg, progress=progress, command=f"POST /train ({job_id})", job_id=job_id
        )
    except Exception as exc:  # noqa: BLE001 - the job fails with a readable error
        _fail(rt, job_id, "train", type(exc).__name__, str(exc))
        return "failed"
    if result.stopped and store.cancel_requested(job_id):
        store.finish(
            job_id,
            "train",
            "canceled",
            finished_ts=time.time(),
            error={"type": "Canceled", "message": f"stopped at step {result.step}"},
        )
        return "canceled"
    try:
        published = rt.registry.publish(out, req["name"], move=True)
    except (RegistryError, OSError) as exc:
        _fail(rt, job_id, "train", "PublishError", str(exc))
        return "failed"
    final = result.final_loss if math.isfinite(result.final_loss) else None
    store.finish(
        job_id,
        "train",
        "succeeded",
        result={"checkpoint": published.ref, "final_loss": final},
        metrics={
            "run_seconds": round(time.time() - started_ts, 3),
            "steps": result.step,
            "resumed_from": resume,
        },
        finished_ts=time.time(),
    )
    _record_times(rt, doc, started_ts)
    log_event(log, "training published", job_id=job_id, checkpoint=published.ref)
    return "succeeded"
