"""A Python client for the ddpm-service HTTP API: :class:`Client` and :class:`AsyncClient`.

>>> from app.client import Client
>>> with Client("http://127.0.0.1:8000") as c:
...     job = c.generate(count=4, seed=42, label=7).wait()
...     job.save("out")           # 00000_seed42.png ... grid.png, as `ddpm sample` names them

It needs httpx alone: nothing of the rest of this project, no torch. Pillow is its one
optional extra, for the PIL images of :meth:`Job.images`, :meth:`Job.grid` and
:meth:`Job.trajectory`; :meth:`Job.save` writes the files without it. Besides the whole
project, it installs on its own as the ``ddpm-service-client`` wheel
(``pip wheel clients/python``; ``ddpm-service-client[images]`` adds Pillow).

Both clients run the same code: every operation is written once, in
:mod:`app.client.core`, as a generator that yields I/O instructions (send a request,
sleep, open an event stream, read a line of it) and receives their results;
:mod:`app.client.sync` (:class:`Client`) carries them out with blocking calls,
:mod:`app.client.aio` (:class:`AsyncClient`) with awaits. The names below are the
public API; the modules' other names are not.

Retries: 429, 502, 503 and 504 wait for ``Retry-After`` (else back off exponentially);
transport errors back off too, including a pooled keep-alive connection that the
server closed just as a request went out (``ReadError``/``RemoteProtocolError``).
Every submit carries an ``Idempotency-Key`` that its retries reuse, so a retried
submit whose first response was lost never makes a second job.
"""

from __future__ import annotations

from .aio import AsyncClient, AsyncJob
from .core import DEFAULT_URL, Progress, output_names
from .errors import ApiError, ClientError, JobCanceled, JobFailed, ServiceUnreachable
from .sync import Client, Job

__all__ = [
    "DEFAULT_URL",
    "Client",
    "AsyncClient",
    "Job",
    "AsyncJob",
    "Progress",
    "ClientError",
    "ApiError",
    "ServiceUnreachable",
    "JobFailed",
    "JobCanceled",
    "output_names",
]
