"""The blocking driver: :class:`Client` and :class:`Job` carry out :mod:`.core`'s
operations with blocking httpx calls."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .core import Call, ClientBase, Close, JobBase, Line, Op, Open, Progress, Run, Send, Sleep

if TYPE_CHECKING:
    from PIL import Image


class Job(JobBase):
    """A job of a :class:`Client`. Results wait for the job to finish first."""

    _client: Client

    def refresh(self) -> Job:
        """Fetch the current document."""
        return self._client._run(self._refresh())

    def wait(
        self, timeout: float | None = None, on_progress: Callable[[Progress], Any] | None = None
    ) -> Job:
        """Block until the job finishes (following its event stream); ``on_progress`` gets
        each :class:`Progress`. Raises JobFailed / JobCanceled, or TimeoutError."""
        return self._client._run(self._wait(timeout, on_progress))

    def cancel(self) -> Job:
        """Cancel: a queued job never starts, a running one stops at its next step.
        ApiError 409 when it had already finished."""
        return self._client._run(self._cancel())

    def images(self) -> list[Image.Image]:
        """The images as PIL images, in order (waits for the job; needs Pillow)."""
        return self._client._run(self._images())

    def grid(self) -> Image.Image:
        """All images tiled in one PIL image (waits for the job; needs Pillow)."""
        return self._client._run(self._image("grid"))

    def trajectory(self) -> Image.Image:
        """The animated denoising GIF (``trajectory_frames`` > 0) as a PIL image."""
        return self._client._run(self._image("trajectory"))

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write the images, the grid and any ``trajectory.gif`` into ``out_dir`` under
        the names ``ddpm sample`` uses (waits for the job); the paths written."""
        return self._client._run(self._save(out_dir))


class Client(ClientBase):
    """A blocking client of the ddpm-service API (a context manager)."""

    _http: httpx.Client
    _job_type = Job

    def _make_http(self) -> httpx.Client:
        return httpx.Client(**self._http_args())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, op: Op) -> Any:
        """Carry out an operation's I/O instructions with blocking calls."""
        run = Run(op)
        try:
            for ins in run:
                try:
                    run.value = self._do(ins, run)
                except httpx.TransportError as exc:
                    run.error = exc
            return run.result
        finally:
            self._close_stream(run)
            op.close()

    def _do(self, ins: Any, run: Run) -> Any:
        match ins:
            case Send():
                return self._http.request(ins.method, ins.path, json=ins.json, headers=ins.headers)
            case Line():
                return next(run.lines, None)
            case Open():
                run.stream = self._http.send(self._stream_request(ins), stream=True)
                if run.stream.status_code != 200:
                    run.stream.read()
                run.lines = run.stream.iter_lines()
                return run.stream
            case Close():
                self._close_stream(run)
            case Sleep():
                time.sleep(ins.seconds)
            case Call():
                return ins.fn(ins.arg)
        return None

    @staticmethod
    def _close_stream(run: Run) -> None:
        if run.stream is not None:
            run.stream.close()
        run.stream = run.lines = None

    def generate(
        self,
        count: int = 1,
        *,
        seed: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        checkpoint: str | None = None,
        label: int | None = None,
        guidance_scale: float | None = None,
        use_ema: bool | None = None,
        trajectory_frames: int | None = None,
        output_format: str | None = None,
        output_quality: int | None = None,
        webhook: str | None = None,
        webhook_events: list[str] | None = None,
        deadline_seconds: float | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a generation job; unset options take the checkpoint's defaults and image
        i uses seed+i; ``output_format`` png (default), webp or jpeg, ``output_quality``
        1..100 for the lossy two. ``webhook``: a URL the service POSTs the signed job document to at
        ``webhook_events`` (start, progress, completed; default completed). A job not
        started within ``deadline_seconds`` is canceled (reason deadline). Each call makes
        a fresh ``Idempotency-Key`` that its retries reuse; pass your own to make a submit
        safe to repeat across processes."""
        # Nothing else is bound yet: locals() is the arguments, the request's fields.
        return self._run(self._generate(locals()))

    def train(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        resume_from: str | None = None,
        webhook: str | None = None,
        webhook_events: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Start a training run (admin) that publishes ``name@N+1``; ``options`` are the
        API's training options (``TrainOptions``)."""
        return self._run(
            self._train(name, options, resume_from, idempotency_key, webhook, webhook_events)
        )

    def job(self, job_id: str) -> Job:
        """An existing job by id (ApiError 404 when unknown or expired)."""
        return self._run(self._job(job_id))

    def checkpoints(self) -> list[dict[str, Any]]:
        """The registry: every checkpoint with its versions."""
        return self._run(self._core.get_json("/checkpoints"))

    def checkpoint(self, name: str) -> dict[str, Any]:
        """One checkpoint's versions, configs and metadata."""
        return self._run(self._core.get_json(f"/checkpoints/{name}"))

    def delete_checkpoint(self, ref: str) -> None:
        """Delete version ``name@version`` (admin)."""
        self._run(self._core.delete(f"/checkpoints/{ref}"))
