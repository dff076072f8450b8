"""The asyncio driver: :class:`AsyncClient` and :class:`AsyncJob` carry out
:mod:`.core`'s operations with awaits."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .core import Call, ClientBase, Close, JobBase, Line, Op, Open, Progress, Run, Send, Sleep

if TYPE_CHECKING:
    from PIL import Image


class AsyncJob(JobBase):
    """A job of an :class:`AsyncClient`: :class:`~app.client.Job`'s methods, as coroutines."""

    _client: AsyncClient

    async def refresh(self) -> AsyncJob:
        """As :meth:`Job.refresh`."""
        return await self._client._run(self._refresh())

    async def wait(
        self, timeout: float | None = None, on_progress: Callable[[Progress], Any] | None = None
    ) -> AsyncJob:
        """As :meth:`Job.wait`; ``on_progress`` may also be a coroutine function."""
        return await self._client._run(self._wait(timeout, on_progress))

    async def cancel(self) -> AsyncJob:
        """As :meth:`Job.cancel`."""
        return await self._client._run(self._cancel())

    async def images(self) -> list[Image.Image]:
        """As :meth:`Job.images`."""
        return await self._client._run(self._images())

    async def grid(self) -> Image.Image:
        """As :meth:`Job.grid`."""
        return await self._client._run(self._image("grid"))

    async def trajectory(self) -> Image.Image:
        """As :meth:`Job.trajectory`."""
        return await self._client._run(self._image("trajectory"))

    async def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """As :meth:`Job.save`."""
        return await self._client._run(self._save(out_dir))


class AsyncClient(ClientBase):
    """The asyncio twin of :class:`~app.client.Client` (an async context manager)."""

    _http: httpx.AsyncClient
    _job_type = AsyncJob

    def _make_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(**self._http_args())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, op: Op) -> Any:
        """Carry out an operation's I/O instructions with awaits."""
        run = Run(op)
        try:
            for ins in run:
                try:
                    run.value = await self._do(ins, run)
                except httpx.TransportError as exc:
                    run.error = exc
            return run.result
        finally:
            await self._close_stream(run)
            op.close()

    async def _do(self, ins: Any, run: Run) -> Any:
        match ins:
            case Send():
                return await self._http.request(
                    ins.method, ins.path, json=ins.json, headers=ins.headers
                )
            case Line():
                return await anext(run.lines, None)
            case Open():
                run.stream = await self._http.send(self._stream_request(ins), stream=True)
                if run.stream.status_code != 200:
                    await run.stream.aread()
                run.lines = run.stream.aiter_lines()
                return run.stream
            case Close():
                await self._close_stream(run)
            case Sleep():
                await asyncio.sleep(ins.seconds)
            case Call():
                value = ins.fn(ins.arg)
                return (await value) if inspect.isawaitable(value) else value
        return None

    @staticmethod
    async def _close_stream(run: Run) -> None:
        if run.stream is not None:
            await run.stream.aclose()
        run.stream = run.lines = None

    async def generate(
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
    ) -> AsyncJob:
        """As :meth:`Client.generate`."""
        # Nothing else is bound yet: locals() is the arguments, the request's fields.
        return await self._run(self._generate(locals()))

    async def train(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        resume_from: str | None = None,
        webhook: str | None = None,
        webhook_events: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncJob:
        """As :meth:`Client.train`."""
        return await self._run(
            self._train(name, options, resume_from, idempotency_key, webhook, webhook_events)
        )

    async def job(self, job_id: str) -> AsyncJob:
        """As :meth:`Client.job`."""
        return await self._run(self._job(job_id))

    async def checkpoints(self) -> list[dict[str, Any]]:
        """As :meth:`Client.checkpoints`."""
        return await self._run(self._core.get_json("/checkpoints"))

    async def checkpoint(self, name: str) -> dict[str, Any]:
        """As :meth:`Client.checkpoint`."""
        return await self._run(self._core.get_json(f"/checkpoints/{name}"))

    async def delete_checkpoint(self, ref: str) -> None:
        """As :meth:`Client.delete_checkpoint`."""
        await self._run(self._core.delete(f"/checkpoints/{ref}"))
