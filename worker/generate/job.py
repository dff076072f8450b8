"""The body of a generation job: validate the request read from Redis, run it through the
engine, store the images. Results go under the job's attempt, so a stale attempt can
never overwrite the files of the attempt that was recorded."""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from app.core.checkpoints.registry import NotFound, RegistryError
from app.core.jobs.options import engine_fields
from app.core.jobs.spec import GENERATE_OPTIONS, GenerateJob
from app.core.stats import QUEUE_BUCKETS, RUN_BUCKETS, checkpoint_fields, histogram_fields
from app.core.store import Claim
from worker import job_trace
from worker.generate.previews import PreviewPublisher
from worker.job_trace import JobTrace
from worker.jobrun import Interrupted, Outcome, durably
from worker.monitor import Held
from worker.runtime import Runtime

__all__ = ["generate_body"]


def generate_body(rt: Runtime, claim: Claim, held: Held) -> Outcome:
    from ddpm_core.config.formats import IMAGE_FORMATS
    from ddpm_core.images import encode_image, gif_bytes, make_grid
    from worker.generate.engine import GenSpec

    job_id, s = claim.job_id, rt.settings
    started = float(claim.doc.get("started_ts") or time.time())
    try:
        req = GenerateJob.model_validate(claim.doc.get("request") or {})
    except ValidationError as exc:
        return Outcome.failed("InvalidJob", f"the stored request is invalid: {exc}")
    if req.count > s.max_count or req.steps > s.max_steps:
        return Outcome.failed("InvalidJob", "the stored request exceeds this worker's limits")
    try:
        ckpt = rt.registry.resolve(req.checkpoint)
        # A local directory of the version: itself, or downloaded from the object store.
        checkpoint_dir = rt.registry.materialize(ckpt)
    except (NotFound, RegistryError) as exc:
        return Outcome.failed("CheckpointNotFound", str(exc))
    spec = GenSpec(
        job_id=job_id,
        checkpoint_path=str(checkpoint_dir),
        checkpoint_ref=ckpt.ref,
        **{name: getattr(req, name) for name, _ in engine_fields(GENERATE_OPTIONS)},
    )

    # Claimed is not yet computing: until its first network call the job waits for the
    # engine (other jobs' rows fill every call, or its model loads). The document says so
    # (progress.waiting), and that wait is reported apart from the run time.
    waited: list[float] = []

    def on_start(at: float) -> None:
        waited.append(round(max(0.0, at - started), 4))
        held.progress({"step": 0, "total": req.steps, "fraction": 0.0, "wait_seconds": waited[0]})

    def on_progress(step: int, total: int, fraction: float) -> None:
        data = {"step": step, "total": total, "fraction": fraction}
        held.progress(data | {"wait_seconds": waited[0]} if waited else data)

    def timing(finished: float) -> dict[str, float]:
        wait = waited[0] if waited else round(max(0.0, finished - started), 4)
        return {"wait_seconds": wait, "run_seconds": round(max(0.0, finished - started - wait), 4)}

    trace = job_trace.current()
    store_kind = claim.doc.get("result_store") or "disk"
    results = rt.results(store_kind)
    previews = PreviewPublisher(results, job_id, claim.attempt, held)
    engine = rt.engine()
    held.alive = lambda: engine.alive(s.stall_timeout)
    held.progress({"step": 0, "total": req.steps, "fraction": 0.0, "waiting": True})
    try:
        job = engine.submit(
            spec,
            on_progress,
            cancel=held.cancel,
            preview=held.preview,
            on_preview=previews.offer,
            on_start=on_start,
            trace_batches=trace.on,
        )
    except RuntimeError as exc:  # the engine is stopping: another worker will run it
        raise Interrupted(str(exc)) from None
    # Live previews are encoded here, off the engine thread, while someone watches.
    while not job.wait(0.1 if held.preview.is_set() else 0.5):
        previews.publish()
    _trace_engine(trace, job, started, waited[0] if waited else None, time.time())
    metrics: dict[str, Any] = {
        "network_calls": job.network_calls,
        "shared_calls": job.shared_calls,
        "max_batch_size": job.max_batch,
        "mean_batch_size": round(sum(job.batch_sizes) / len(job.batch_sizes), 3)
        if job.batch_sizes
        else None,
        "worker": rt.name,
        "attempt": claim.attempt,
        "precision": job.precision or None,
    } | timing(time.time())
    if job.status == "interrupted":
        raise Interrupted("the engine stopped")
    if job.status == "canceled":
        return Outcome.canceled("canceled while running", metrics=metrics)
    if job.status != "succeeded" or job.pixels is None:
        err = job.error
        return Outcome.failed(
            err.type if err else "Error", err.message if err else "unknown", metrics=metrics
        )
    attempt = claim.attempt
    # uint8 pixels from the engine: encoding them here runs no torch op in this thread.
    ext = IMAGE_FORMATS[req.output_format].extension

    def encode(pixels: Any) -> bytes:
        return encode_image(pixels, req.output_format, req.output_quality)

    with trace.phase("encode", format=req.output_format, images=req.count):
        files = {f"{i}.{ext}": encode(job.pixels[i]) for i in range(req.count)}
        if req.count > 1:  # a one-image grid is the image itself: the API serves 0.<ext>
            files[f"grid.{ext}"] = encode(make_grid(job.pixels))
        if job.frame_pixels:
            files["trajectory.gif"] = gif_bytes([make_grid(f) for f in job.frame_pixels])
    try:
        with trace.phase("store results", store=store_kind, files=len(files)):
            for name, data in files.items():
                durably(
                    rt, "store results", lambda n=name, d=data: results.put(job_id, n, d, attempt)
                )
    except OSError as exc:  # disk full, permissions: the job fails with the reason
        return Outcome.failed("ResultStoreError", str(exc), metrics=metrics)
    result: dict[str, Any] = {
        "images": [
            {"index": i, "seed": req.seed + i, "url": f"/jobs/{job_id}/images/{i}.{ext}"}
            for i in range(req.count)
        ],
        "grid_url": f"/jobs/{job_id}/grid.{ext}",
        "format": req.output_format,
        "trajectory_url": f"/jobs/{job_id}/trajectory.gif" if job.frame_pixels else None,
    }
    finished = time.time()
    metrics |= timing(finished)
    stats = [("images_generated", float(req.count))]
    created = claim.doc.get("created_ts")
    if created:
        stats += histogram_fields("queue_seconds", max(0.0, started - created), QUEUE_BUCKETS)
    stats += histogram_fields("run_seconds", finished - started, RUN_BUCKETS)
    stats += checkpoint_fields(ckpt.ref, stats)
    last = {"step": req.steps, "total": req.steps, "fraction": 1.0}
    return Outcome(
        "succeeded",
        {
            "result": result,
            "result_attempt": attempt,
            "metrics": metrics,
            "progress": last,
        },
        stats,
    )


def _trace_engine(
    trace: JobTrace, job: Any, started: float, wait: float | None, done: float
) -> None:
    """The engine's part of the job as spans: the wait for its first network call, then
    the denoising, with a span per run of calls it shared with the same jobs."""
    if not trace.on:
        return
    begun = started + wait if wait is not None else done
    trace.record("engine wait", started, begun)
    if wait is None:
        return
    denoise = trace.open("denoise", begun, calls=job.network_calls, precision=job.precision)
    for seg in job.segments or []:
        trace.record(
            "batch",
            seg.start,
            seg.end,
            parent=denoise,
            calls=seg.calls,
            batch_size=seg.size,
            batch_jobs=seg.jobs,
            **{"ddpm.batch.other_jobs": seg.partners},
        )
    denoise.end(end_time=int(done * 1e9))
