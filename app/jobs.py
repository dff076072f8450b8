"""Job submission and presentation: the logic behind the thin routes."""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any, NamedTuple

from kombu.exceptions import OperationalError
from pydantic import ValidationError
from starlette.responses import Response

from ddpm_core.unet_config import (
    ModelTooLarge,
    UNetConfig,
    check_model_size,
    training_unet_config,
)

from .logs import log_event
from .queue import TASK_OF, TaskMessages
from .registry import InvalidCheckpoint, InvalidName, NotFound, Registry, ResolvedCheckpoint
from .schemas import GenerateRequest, JobDocument, TrainOptions, TrainRequest
from .settings import Settings
from .store import (
    ClientLimit,
    IdempotencyConflict,
    JobStore,
    QueueFull,
    fingerprint,
    new_job_id,
)

__all__ = [
    "ApiError",
    "normalise_generate",
    "normalise_train",
    "validate_train_options",
    "submit_job",
    "Submitted",
    "job_document",
    "present",
    "document_response",
    "cancel_job",
]

log = logging.getLogger("ddpm.api")
_RETRY = {"Retry-After": "5"}


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


# Checkpoint configs already found within the size limits, by (id, limits); the value
# keeps the config alive, so its id is not reused. Sizing a network walks its whole
# layout (a third of a submission's time) and a version's config never changes.
_WITHIN_LIMITS: dict[tuple[int, int, int], Any] = {}


def _check_checkpoint_size(ckpt: ResolvedCheckpoint, settings: Settings) -> None:
    key = (id(ckpt.spec), settings.max_model_params, settings.max_activation_bytes)
    if _WITHIN_LIMITS.get(key) is ckpt.spec:
        return
    assert ckpt.spec is not None
    _check_size(ckpt.spec.unet, settings, f"checkpoint {ckpt.ref}", "checkpoint")
    if len(_WITHIN_LIMITS) >= 1024:
        _WITHIN_LIMITS.clear()
    _WITHIN_LIMITS[key] = ckpt.spec


def normalise_generate(
    req: GenerateRequest, settings: Settings, registry: Registry
) -> dict[str, Any]:
    """Check ``req`` against the limits and the checkpoint's config; fill in the defaults.

    Returns the normalised request (resolved seed and ``name@version``)."""
    ckpt = _resolve(registry, req.checkpoint or settings.default_checkpoint)
    cfg = ckpt.spec
    assert cfg is not None  # resolve validates by default
    _check_checkpoint_size(ckpt, settings)
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


class Submitted(NamedTuple):
    """What :func:`submit_job` did: the public ``document``; ``created`` False for an
    Idempotency-Key replay; ``stored``, the stored form of a created job."""

    document: JobDocument
    created: bool
    stored: dict[str, Any] | None = None


def submit_job(
    kind: str,
    request: dict[str, Any],
    settings: Settings,
    store: JobStore,
    messages: TaskMessages,
    *,
    client: str = "anon",
    idem_key: str | None = None,
    body: Any = None,
) -> Submitted:
    """Record a queued job together with its task's message (task id = job id), in one
    atomic step. A replay of an Idempotency-Key sends nothing (its message went with the
    job; if that was lost since, the reaper sends another). ``idem_key`` is scoped to the
    client and the endpoint and bound to ``body``: the same key and body return the first
    job, another body is refused (422)."""
    limit = settings.queue_limit if kind == "generate" else settings.train_queue_limit
    job_id = new_job_id()
    message = messages.encode(TASK_OF[kind], job_id)
    try:
        sub = store.create(
            kind,
            request,
            {"result_store": settings.result_store} if kind == "generate" else {},
            client=client,
            idem_key=f"{client}:{kind}:{idem_key}" if idem_key else None,
            body_fingerprint=fingerprint(body) if idem_key else "",
            queue_limit=limit,
            client_limit=0 if client == "admin" else settings.max_jobs_per_client,
            job_id=job_id,
            message=message,
        )
    except QueueFull:
        raise ApiError(429, f"the {kind} queue is full; retry later", headers=_RETRY) from None
    except ClientLimit:
        raise ApiError(
            429,
            f"this client has {settings.max_jobs_per_client} unfinished jobs, its limit; "
            "retry when some have finished",
            headers=_RETRY,
        ) from None
    except IdempotencyConflict as exc:
        raise ApiError(
            422,
            f"this Idempotency-Key was used for job {exc.job_id} with a different request body",
            "Idempotency-Key",
        ) from None
    if not sub.created:
        return Submitted(job_document(store, sub.job_id), False)
    if message is None:  # a route Celery must publish itself
        try:
            messages.send(TASK_OF[kind], job_id)
        except OperationalError as exc:
            log_event(
                log,
                "broker refused the message; the reaper will send it",
                logging.WARNING,
                job_id=job_id,
                error=str(exc),
            )
    log_event(log, "job submitted", job_id=job_id, kind=kind, client=client)
    assert sub.doc is not None
    return Submitted(present(sub.doc, sub.position), True, sub.doc)


def job_document(store: JobStore, job_id: str) -> JobDocument:
    """The public document of a job; ApiError 404 when unknown or expired."""
    doc = store.get(job_id)
    if doc is None:
        raise ApiError(404, f"job {job_id} not found (unknown or expired)")
    position = store.queue_position(job_id, doc["kind"]) if doc["status"] == "queued" else None
    return present(doc, position)


def present(doc: dict[str, Any], position: int | None) -> JobDocument:
    """The public document of stored job ``doc`` (``position``: its place in the queue)."""
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


def document_response(
    doc: JobDocument, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """``doc`` as a JSON response, serialised once (a route returning the model would have
    FastAPI validate it again against its response_model)."""
    return Response(doc.model_dump_json(), status, headers, media_type="application/json")


def cancel_job(store: JobStore, job_id: str) -> JobDocument:
    """Cancel: a queued job never starts, a running one stops at its next step; 409 if done."""
    doc = store.get(job_id)
    if doc is None:
        raise ApiError(404, f"job {job_id} not found (unknown or expired)")
    outcome, status = store.cancel(job_id, doc["kind"])
    if outcome == "gone":
        raise ApiError(404, f"job {job_id} not found (unknown or expired)")
    if outcome == "finished":
        raise ApiError(409, f"job {job_id} has already {status}")
    log_event(log, "job canceled" if outcome == "canceled" else "cancel requested", job_id=job_id)
    return job_document(store, job_id)
