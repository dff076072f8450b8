"""The body of a training job: validate the options read from Redis, train (resuming from
this job's own saved state when an earlier attempt left one), publish once.

One process trains in the worker itself; several (``DDPM_TRAIN_DEVICES``: every GPU of
the host by default) train as a torchrun child of the worker (:mod:`worker.train.processes`)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

from app.core.checkpoints.registry import NAME_RE, RegistryError
from app.core.errors import InvalidInput
from app.core.jobs.validate import validate_train_options
from app.core.store import Claim
from worker import job_trace
from worker.generate.previews import PreviewPublisher
from worker.jobrun import Outcome
from worker.monitor import Held
from worker.runtime import Runtime
from worker.train.processes import ChildFailed, run_processes, train_processes

__all__ = ["train_body"]


def train_body(rt: Runtime, claim: Claim, held: Held) -> Outcome:
    from ddpm_core.train import STATE_DIR, TrainConfig
    from ddpm_core.train import train as run_training

    job_id, s = claim.job_id, rt.settings
    req = claim.doc.get("request") or {}
    name = req.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return Outcome.failed("InvalidJob", "the stored checkpoint name is invalid")
    try:  # the API's own checks: model, dataset under DATA_DIR/datasets, network size
        options = validate_train_options(req.get("options") or {}, s)
    except InvalidInput as exc:
        return Outcome.failed("InvalidJob", f"stored training options: {exc.field}: {exc}")
    if (done := rt.registry.published_by(name, job_id)) is not None:
        # An earlier attempt published and died before recording it: record that version.
        loss = rt.registry.meta(done).get("loss")
        final = loss if isinstance(loss, float) and math.isfinite(loss) else None
        return Outcome("succeeded", {"result": {"checkpoint": done.ref, "final_loss": final}})
    data_dir = Path(s.data_dir).resolve()
    config: dict[str, Any] = options.model_dump(exclude_unset=True)
    if options.dataset != "digits":  # a plain folder name, checked to exist above
        config["dataset"] = str(data_dir / "datasets" / options.dataset)
    try:
        processes, proc_env, config["device"] = train_processes(s.train_devices, s.device)
    except ValueError as exc:
        return Outcome.failed("InvalidTrainDevices", str(exc))
    config.setdefault("save_every", max(100, options.steps // 10))  # resumable state
    out = data_dir / "runs" / job_id
    resume = None
    if (out / STATE_DIR / "state.json").exists():
        resume = str(out)  # an earlier attempt of this job left resumable state
    elif req.get("resume_from"):
        try:
            src = rt.registry.materialize(rt.registry.resolve(req["resume_from"]), full=True)
        except RegistryError as exc:
            return Outcome.failed("CheckpointNotFound", str(exc))
        if (src / STATE_DIR / "state.json").exists():
            resume = str(src)
    try:
        cfg = TrainConfig.from_dict(config | {"out": str(out), "resume_from": resume})
    except (TypeError, ValueError) as exc:
        return Outcome.failed("InvalidTrainConfig", str(exc))

    last_beat = [time.monotonic()]
    held.alive = lambda: time.monotonic() - last_beat[0] < s.stall_timeout
    previews = PreviewPublisher(
        rt.results(claim.doc.get("result_store") or "disk"), job_id, claim.attempt, held
    )

    def progress(p: Any) -> bool:
        last_beat[0] = time.monotonic()
        # The run wrote a preview grid (sample_every) or a checkpoint with its samples.png:
        # the job's preview. Training makes these anyway, so they go out watched or not.
        png = p.sample_png
        if png is None and p.checkpoint_path:
            with contextlib.suppress(OSError):
                png = (Path(p.checkpoint_path) / "samples.png").read_bytes()
        if png is not None:
            previews.publish_png(p.step, p.total_steps, png)
        held.progress(
            {
                "step": p.step,
                "total": p.total_steps,
                "fraction": round(p.step / max(p.total_steps, 1), 4),
                "loss": p.loss if math.isfinite(p.loss) else None,
                "lr": p.lr,
                "images_per_sec": round(p.images_per_sec, 2),
            }
        )
        return held.cancel.is_set()

    started = time.time()
    command = f"POST /train ({job_id})"
    trace = job_trace.current()
    with trace.phase("train", steps=cfg.steps, processes=processes, resumed=resume is not None):
        if processes > 1:
            try:
                result: Any = run_processes(
                    cfg.to_dict(), processes, proc_env, data_dir / "runs", job_id, progress,
                    held.cancel, command,
                )  # fmt: skip
            except ChildFailed as exc:
                return Outcome.failed(exc.type, exc.message)
        else:
            result = run_training(cfg, progress=progress, command=command, job_id=job_id)
    if result.stopped:
        # Canceled, or the lease was lost (then the outcome is discarded anyway).
        return Outcome.canceled(f"stopped at step {result.step}")
    curve = _loss_curve(out)
    with trace.phase("publish", checkpoint=name):
        published = rt.registry.publish(out, name, move=True, job_id=job_id)
    final = result.final_loss if math.isfinite(result.final_loss) else None
    return Outcome(
        "succeeded",
        {
            "result": {"checkpoint": published.ref, "final_loss": final, "loss_curve": curve},
            "metrics": {
                "run_seconds": round(time.time() - started, 3),
                "steps": result.step,
                "resumed": resume is not None,
                "attempt": claim.attempt,
                "processes": processes,
            },
            "progress": {"step": result.step, "total": result.total_steps, "fraction": 1.0},
        },
    )


def _loss_curve(ckpt_dir: Path) -> list[list[float]] | None:
    """The run's curve as its checkpoint recorded it (meta.json), for the job document:
    the page draws a finished run from it once the run's events have expired."""
    try:
        meta = json.loads((ckpt_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    curve = meta.get("loss_curve")
    return curve if isinstance(curve, list) else None
