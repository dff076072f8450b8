"""Job submission and presentation: the logic behind the thin routes."""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from ddpm_core.unet_config import (
    ModelTooLarge,
    UNetConfig,
    check_model_size,
    training_unet_config,
)

from .logs import log_event
from .queue import GENERATE_TASK, TRAIN_TASK
from .registry import InvalidCheckpoint, InvalidName, NotFound, Registry, ResolvedCheckpoint
from .schemas import TERMINAL, GenerateRequest, JobDocument, TrainOptions, TrainRequest
from .settings import Settings
from .store import JobStore

__all__ = [
    "ApiError",
    "normalise_generate",
    "normalise_train",
    "validate_train_options",
    "submit_job",
    "job_document",
    "cancel_job",
]

log = logging.getLogger("ddpm.api")


class ApiError(Exception):
    """An error with an HTTP status; ``field`` names the offending field (422)."""

    def __init__(
        self, status: int, message: str, field: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}


def _resolve(registry: Registry, ref: str, field: str = "checkpoint") -> ResolvedCheckpoint:
    try:
        return registry.resolve(ref)
    except (InvalidName, InvalidCheckpoint) as exc:
        raise ApiError(422, str(exc), field) from None
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None


_LIMIT_SETTINGS = {
    "params": "DDPM_MAX_MODEL_PARAMS",
    "activation_bytes": "DDPM_MAX_ACTIVATION_BYTES",
}


def _check_size(unet: UNetConfig, settings: Settings, what: str, field: str) -> None:
    """ApiError 422 on ``field`` when the network ``unet`` is over the size settings."""
    try:
        check_model_size(unet, settings.max_model_params, settings.max_activation_bytes)
    except ModelTooLarge as exc:
        msg = f"{what} {exc.problem} ({_LIMIT_SETTINGS[exc.limit]})"
        raise ApiError(422, msg, field) from None


def normalise_generate(
    req: GenerateRequest, settings: Settings, registry: Registry
) -> dict[str, Any]:
    """Check ``req`` against the limits and the checkpoint's config; fill in the defaults.

    Returns the normalised request (resolved seed and ``name@version``)."""
    ckpt = _resolve(registry, req.checkpoint or settings.default_checkpoint)
    cfg = ckpt.spec
    assert cfg is not None  # resolve validates by default
    _check_size(cfg.unet, settings, f"checkpoint {ckpt.ref}", "checkpoint")
    T = cfg.num_train_timesteps
    num_classes = cfg.num_classes
    if req.count > settings.max_count:
        raise ApiError(422, f"count must be at most {settings.max_count}", "count")
    steps = req.steps if req.steps is not None else cfg.default_steps
    max_steps = min(T, settings.max_steps)
    if steps > max_steps:
        raise ApiError(422, f"steps must be at most {max_steps} for this checkpoint", "steps")
    sampler = req.sampler or cfg.default_sampler
    if req.eta is not None and sampler != "ddim":
        raise ApiError(422, "eta applies to the ddim sampler only", "eta")
    eta = (req.eta if req.eta is not None else cfg.default_eta) if sampler == "ddim" else 0.0
    if req.label is not None:
        if not num_classes:
            raise ApiError(422, "this checkpoint is unconditional: label is not accepted", "label")
        if req.label >= num_classes:
            raise ApiError(422, f"label must lie in [0, {num_classes - 1}]", "label")
    if req.guidance_scale is not None and req.label is None:
        raise ApiError(
            422, "guidance_scale needs a label (class-conditional sampling)", "guidance_scale"
        )
    guidance = None
    if req.label is not None:
        guidance = (
            req.guidance_scale if req.guidance_scale is not None else cfg.default_guidance_scale
        )
    frames_max = min(settings.max_trajectory_frames, steps)
    if req.trajectory_frames > frames_max:
        raise ApiError(422, f"trajectory_frames must be at most {frames_max}", "trajectory_frames")
    seed = req.seed if req.seed is not None else secrets.randbelow(2**62)
    return {
        "count": req.count,
        "seed": seed,
        "steps": steps,
        "sampler": sampler,
        "eta": eta,
        "checkpoint": ckpt.ref,
        "label": req.label,
        "guidance_scale": guidance,
        "use_ema": req.use_ema,
        "trajectory_frames": req.trajectory_frames,
        "image_size": cfg.image_size,
        "channels": cfg.channels,
    }


def _first_error(exc: ValidationError, prefix: str) -> ApiError:
    e = exc.errors()[0]
    field = ".".join([prefix, *(str(p) for p in e.get("loc", ()))])
    return ApiError(422, e.get("msg", "invalid"), field)


def validate_train_options(
    options: dict[str, Any] | TrainOptions, settings: Settings
) -> TrainOptions:
    """Training options checked as ``POST /train`` checks them: the model (types, ranges,
    the network's config), the dataset folder under DATA_DIR/datasets, and the network's
    size against ``max_model_params``/``max_activation_bytes``. For the worker, too, to
    re-validate what it reads from Redis. ApiError 422 naming ``options.<field>``."""
    if not isinstance(options, TrainOptions):
        try:
            options = TrainOptions.model_validate(options)
        except ValidationError as exc:
            raise _first_error(exc, "options") from None
    dataset = options.dataset
    if dataset != "digits" and not (Path(settings.data_dir) / "datasets" / dataset).is_dir():
        raise ApiError(
            422, f"no dataset folder {dataset!r} under DATA_DIR/datasets", "options.dataset"
        )
    unet = training_unet_config(
        options.preset,
        options.image_size,
        options.channels,
        # Class count of the labels, for the size only: digits has 10, a folder <= its files.
        10 if options.class_cond else None,
        options.unet_overrides,
    )
    field = "options.unet_overrides" if options.unet_overrides else "options.image_size"
    _check_size(unet, settings, "the requested network", field)
    return options


def normalise_train(req: TrainRequest, settings: Settings, registry: Registry) -> dict[str, Any]:
    """The training request with ``resume_from`` resolved to ``name@version``, only the
    options the client set, and a dataset folder that exists under DATA_DIR/datasets."""
    validate_train_options(req.options, settings)
    out = req.model_dump(exclude={"options"})
    out["options"] = req.options.model_dump(exclude_unset=True)
    if req.resume_from:
        out["resume_from"] = _resolve(registry, req.resume_from, "resume_from").ref
    return out


def submit_job(
    kind: str,
    request: dict[str, Any],
    settings: Settings,
    store: JobStore,
    celery: Celery,
    idem_key: str | None = None,
) -> tuple[str, bool]:
    """Record a queued job and enqueue its task (task id = job id). Returns (id, created)."""
    if idem_key:
        existing = store.idempotent_job(idem_key)
        if existing and store.get(existing) is not None:
            return existing, False
    if kind == "generate" and store.queue_depth(kind) >= settings.queue_limit:
        raise ApiError(429, "the queue is full; retry later", headers={"Retry-After": "5"})
    extra = {"result_store": settings.result_store} if kind == "generate" else {}
    job_id, created = store.create(kind, request, extra, idem_key)
    if not created:
        return job_id, False
    task = GENERATE_TASK if kind == "generate" else TRAIN_TASK
    try:
        celery.send_task(task, args=[job_id], task_id=job_id)
    except OperationalError as exc:
        store.forget_submission(job_id, kind, idem_key)
        raise ApiError(503, f"the broker is unreachable ({exc})") from None
    log_event(log, "job submitted", job_id=job_id, kind=kind, task=task)
    return job_id, True


def job_document(store: JobStore, job_id: str) -> JobDocument:
    """The public document of a job; ApiError 404 when unknown or expired."""
    doc = store.get(job_id)
    if doc is None:
        raise ApiError(404, f"job {job_id} not found (unknown or expired)")
    now = time.time()
    progress = doc.get("progress") or {}
    metrics = dict(doc.get("metrics") or {})
    created, started, finished = (
        doc.get("created_ts"),
        doc.get("started_ts"),
        doc.get("finished_ts"),
    )
    if started and created:
        metrics.setdefault("queue_seconds", round(started - created, 4))
    if started:
        metrics.setdefault("run_seconds", round((finished or now) - started, 4))
    eta = None
    if doc["status"] == "running" and started and progress.get("fraction", 0) > 0:
        f = progress["fraction"]
        eta = round((now - started) * (1 - f) / f, 3)
    position = store.queue_position(job_id, doc["kind"]) if doc["status"] == "queued" else None
    return JobDocument(
        id=doc["id"],
        kind=doc["kind"],
        status=doc["status"],
        created_at=doc["created_at"],
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        queue_position=position,
        progress=progress,
        eta_seconds=eta,
        request=doc.get("request") or {},
        result=doc.get("result"),
        error=doc.get("error"),
        metrics=metrics,
        attempts=int(doc.get("attempts") or 0),
    )


def cancel_job(store: JobStore, job_id: str) -> JobDocument:
    """Cancel: a queued job never starts, a running one stops at its next step; 409 if done."""
    doc = store.get(job_id)
    if doc is None:
        raise ApiError(404, f"job {job_id} not found (unknown or expired)")
    if doc["status"] in TERMINAL:
        raise ApiError(409, f"job {job_id} is already {doc['status']}")
    store.request_cancel(job_id)
    err = {"type": "Canceled", "message": "canceled before it started"}
    if store.finish(
        job_id, doc["kind"], "canceled", allowed=("queued",), error=err, finished_ts=time.time()
    ):
        log_event(log, "job canceled while queued", job_id=job_id)
    else:
        log_event(log, "cancel requested", job_id=job_id)
    return job_document(store, job_id)
