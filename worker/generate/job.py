"""The body of a generation job: validate the request read from Redis, run it through the
engine, store the images. Results go under the job's attempt, so a stale attempt can
never overwrite the files of the attempt that was recorded."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.core.checkpoints.registry import NotFound, RegistryError
from app.core.stats import QUEUE_BUCKETS, RUN_BUCKETS, histogram_fields
from app.core.store import Claim
from worker.generate.previews import PreviewPublisher
from worker.jobrun import Interrupted, Outcome, durably
from worker.monitor import Held
from worker.runtime import Runtime

__all__ = ["GenerateJob", "generate_body"]


class GenerateJob(BaseModel):
    """A normalised generation request as the API stored it; checked again here, because
    a worker trusts nothing it reads from Redis."""

    model_config = ConfigDict(extra="ignore")

    count: int = Field(ge=1, le=4096)
    seed: int = Field(ge=0, le=2**62 + 4096)
    steps: int = Field(ge=1, le=100_000)
    sampler: Literal["ddpm", "ddim", "dpm++2m", "dpm++3m", "dpm++2m-sde"]
    eta: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    checkpoint: str = Field(max_length=140)
    label: int | None = Field(None, ge=0)
    guidance_scale: float | None = Field(None, ge=0.0, le=100.0, allow_inf_nan=False)
    use_ema: bool = True
    trajectory_frames: int = Field(0, ge=0, le=1000)


def generate_body(rt: Runtime, claim: Claim, held: Held) -> Outcome:
    from ddpm_core.images import gif_bytes, make_grid, png_bytes
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
        count=req.count,
        seed=req.seed,
        steps=req.steps,
        sampler=req.sampler,
        eta=req.eta,
        label=req.label,
        guidance_scale=req.guidance_scale,
        use_ema=req.use_ema,
        trajectory_frames=req.trajectory_frames,
    )

    def on_progress(step: int, total: int, fraction: float) -> None:
        held.progress({"step": step, "total": total, "fraction": fraction})

    store_kind = claim.doc.get("result_store") or "disk"
    results = rt.results(store_kind)
    previews = PreviewPublisher(results, job_id, claim.attempt, held)
    engine = rt.engine()
    held.alive = lambda: engine.alive(s.stall_timeout)
    try:
        job = engine.submit(
            spec, on_progress, cancel=held.cancel, preview=held.preview, on_preview=previews.offer
        )
    except RuntimeError as exc:  # the engine is stopping: another worker will run it
        raise Interrupted(str(exc)) from None
    # Live previews are encoded here, off the engine thread, while someone watches.
    while not job.wait(0.1 if held.preview.is_set() else 0.5):
        previews.publish()
    metrics: dict[str, Any] = {
        "network_calls": job.network_calls,
        "shared_calls": job.shared_calls,
        "max_batch_size": job.max_batch,
        "mean_batch_size": round(sum(job.batch_sizes) / len(job.batch_sizes), 3)
        if job.batch_sizes
        else None,
        "worker": rt.name,
        "attempt": claim.attempt,
    }
    if job.status == "interrupted":
        raise Interrupted("the engine stopped")
    if job.status == "canceled":
        return Outcome.canceled("canceled while running", metrics=metrics)
    if job.status != "succeeded" or job.images is None:
        err = job.error
        return Outcome.failed(
            err.type if err else "Error", err.message if err else "unknown", metrics=metrics
        )
    attempt = claim.attempt
    files = {f"{i}.png": png_bytes(job.images[i]) for i in range(req.count)}
    if req.count > 1:  # a one-image grid is the image itself: the API serves 0.png
        files["grid.png"] = png_bytes(make_grid(job.images))
    if job.frames:
        files["trajectory.gif"] = gif_bytes([make_grid(f) for f in job.frames])
    try:
        for name, data in files.items():
            durably(rt, "store results", lambda n=name, d=data: results.put(job_id, n, d, attempt))
    except OSError as exc:  # disk full, permissions: the job fails with the reason
        return Outcome.failed("ResultStoreError", str(exc), metrics=metrics)
    result: dict[str, Any] = {
        "images": [
            {"index": i, "seed": req.seed + i, "url": f"/jobs/{job_id}/images/{i}.png"}
            for i in range(req.count)
        ],
        "grid_url": f"/jobs/{job_id}/grid.png",
        "trajectory_url": f"/jobs/{job_id}/trajectory.gif" if job.frames else None,
    }
    finished = time.time()
    metrics["run_seconds"] = round(finished - started, 4)
    stats = [("images_generated", float(req.count))]
    created = claim.doc.get("created_ts")
    if created:
        stats += histogram_fields("queue_seconds", max(0.0, started - created), QUEUE_BUCKETS)
    stats += histogram_fields("run_seconds", finished - started, RUN_BUCKETS)
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
