"""Submitting jobs: a request checked against the limits and its checkpoint, its defaults
filled in, then stored together with its task's message in one atomic step."""

from __future__ import annotations

import logging
import secrets
from typing import Any, NamedTuple

from kombu.exceptions import OperationalError

from app.api.schemas import JobDocument
from app.api.services.documents import job_document, present
from app.core.checkpoints import (
    InvalidCheckpoint,
    InvalidName,
    NotFound,
    Registry,
    ResolvedCheckpoint,
)
from app.core.errors import InvalidInput, LimitReached, NotFoundError
from app.core.jobs.ids import new_job_id
from app.core.jobs.names import TASK_OF
from app.core.jobs.spec import GenerateRequest, TrainRequest
from app.core.jobs.validate import check_checkpoint_size, validate_train_options
from app.core.jobs.webhook import WEBHOOK_FIELDS
from app.core.logs import log_event
from app.core.queue import TaskMessages
from app.core.settings import Settings
from app.core.store import ClientLimit, IdempotencyConflict, JobStore, QueueFull, fingerprint

__all__ = ["normalise_generate", "normalise_train", "submit_job", "Submitted"]

log = logging.getLogger("ddpm.api")


def _resolve(registry: Registry, ref: str, field: str = "checkpoint") -> ResolvedCheckpoint:
    try:
        return registry.resolve(ref)
    except (InvalidName, InvalidCheckpoint) as exc:
        raise InvalidInput(str(exc), field) from None
    except NotFound as exc:
        raise NotFoundError(str(exc)) from None


def normalise_generate(
    req: GenerateRequest, settings: Settings, registry: Registry
) -> dict[str, Any]:
    """Check ``req`` against the limits and the checkpoint's config; fill in the defaults.

    Returns the normalised request (resolved seed and ``name@version``)."""
    ckpt = _resolve(registry, req.checkpoint or settings.default_checkpoint)
    cfg = ckpt.spec
    assert cfg is not None  # resolve validates by default
    check_checkpoint_size(cfg, ckpt.ref, settings)
    T = cfg.num_train_timesteps
    num_classes = cfg.num_classes
    if req.count > settings.max_count:
        raise InvalidInput(f"count must be at most {settings.max_count}", "count")
    steps = req.steps if req.steps is not None else cfg.default_steps
    max_steps = min(T, settings.max_steps)
    if steps > max_steps:
        raise InvalidInput(f"steps must be at most {max_steps} for this checkpoint", "steps")
    sampler = req.sampler or cfg.default_sampler
    if req.eta is not None and sampler != "ddim":
        raise InvalidInput("eta applies to the ddim sampler only", "eta")
    eta = (req.eta if req.eta is not None else cfg.default_eta) if sampler == "ddim" else 0.0
    if req.label is not None:
        if not num_classes:
            raise InvalidInput("this checkpoint is unconditional: label is not accepted", "label")
        if req.label >= num_classes:
            raise InvalidInput(f"label must lie in [0, {num_classes - 1}]", "label")
    if req.guidance_scale is not None and req.label is None:
        raise InvalidInput(
            "guidance_scale needs a label (class-conditional sampling)", "guidance_scale"
        )
    guidance = None
    if req.label is not None:
        guidance = (
            req.guidance_scale if req.guidance_scale is not None else cfg.default_guidance_scale
        )
    frames_max = min(settings.max_trajectory_frames, steps)
    if req.trajectory_frames > frames_max:
        raise InvalidInput(f"trajectory_frames must be at most {frames_max}", "trajectory_frames")
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
        "output_format": req.output_format,
        "output_quality": req.output_quality,
        "image_size": cfg.image_size,
        "channels": cfg.channels,
    }


def normalise_train(req: TrainRequest, settings: Settings, registry: Registry) -> dict[str, Any]:
    """The training request with ``resume_from`` resolved to ``name@version``, only the
    options the client set, and a dataset folder that exists under DATA_DIR/datasets."""
    validate_train_options(req.options, settings)
    out = req.model_dump(exclude={"options", "deadline_seconds", *WEBHOOK_FIELDS})
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
    webhook: dict[str, Any] | None = None,
    deadline_seconds: float | None = None,
    trace: dict[str, str] | None = None,
) -> Submitted:
    """Record a queued job together with its task's message (task id = job id), in one
    atomic step. A replay of an Idempotency-Key sends nothing (its message went with the
    job; if that was lost since, the reaper sends another). ``idem_key`` is scoped to the
    client and the endpoint and bound to ``body``: the same key and body return the first
    job, another body is refused (422). ``webhook`` (``stored_webhook`` of the request)
    goes into the document, where the store's transitions find it; so does the deadline,
    and ``trace``, the request span's ``traceparent`` that the worker continues."""
    limit = settings.queue_limit if kind == "generate" else settings.train_queue_limit
    extra: dict[str, Any] = {"result_store": settings.result_store} if kind == "generate" else {}
    if webhook:
        extra["webhook"] = webhook
    if trace:
        extra["trace"] = trace
    job_id = new_job_id()
    message = messages.encode(TASK_OF[kind], job_id)
    try:
        sub = store.create(
            kind,
            request,
            extra,
            client=client,
            idem_key=f"{client}:{kind}:{idem_key}" if idem_key else None,
            body_fingerprint=fingerprint(body) if idem_key else "",
            queue_limit=limit,
            client_limit=0 if client == "admin" else settings.max_jobs_per_client,
            job_id=job_id,
            message=message,
            deadline_seconds=deadline_seconds,
        )
    except QueueFull:
        raise LimitReached(f"the {kind} queue is full; retry later") from None
    except ClientLimit:
        raise LimitReached(
            f"this client has {settings.max_jobs_per_client} unfinished jobs, its limit; "
            "retry when some have finished"
        ) from None
    except IdempotencyConflict as exc:
        raise InvalidInput(
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
