"""The job store: job documents, their events, leases and every state transition, in Redis.

Keys (all under the configured prefix, ``ddpm:`` by default)::

    job:{id}            hash, one JSON value per field of the job document
    job:{id}:events     stream (capped with MAXLEN), the SSE source
    job:{id}:cancel     cancel flag (deleted when the job finishes)
    job:{id}:preview    a client watches the live preview (short TTL, refreshed by the stream)
    queue:{kind}        sorted set of queued jobs by submit time (gen, train)
    leases:{kind}       sorted set of running jobs by lease expiry (Redis time, ms)
    inflight:{client}   sorted set of a client's unfinished jobs (per-client limit)
    idem:{client}:{endpoint}:{key}   "job-id fingerprint" of an Idempotency-Key
    expiry              sorted set of finished jobs by expiry time (result clean-up)
    worker:{name}       heartbeat (JSON) with a TTL
    stats               counters and histogram buckets for /metrics

The job hash is the source of truth. Every transition -- create, claim (start),
renew/progress, finish (succeed, fail, cancel), requeue -- is ONE Lua script
(``lua/*.lua``, their keys and arguments named in :mod:`app.core.store.scripts`), so
the document, its sets, its events and the counters change together or not at
all. A running job's ``attempts`` is its fencing token: only the worker holding
the current attempt can renew its lease, report progress or finish it, so a
stale worker that wakes up after its lease expired changes nothing. Lease times
come from the Redis server clock, never from a worker's.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio as aredis

from app.core.jobs.ids import new_job_id
from app.core.jobs.names import QUEUE_OF
from app.core.stats import histogram_fields
from app.core.store.connection import NotReplicated, connect, wait_for_replica
from app.core.store.scripts import StoreScripts

__all__ = [
    "JobStore",
    "Claim",
    "Submission",
    "QueueFull",
    "ClientLimit",
    "IdempotencyConflict",
    "store_from_settings",
    "now_iso",
    "fingerprint",
    "parse_doc",
    "RENEW_CANCEL",
    "RENEW_PREVIEW",
]

# A job's `progress` webhooks are coalesced: at most one delivery queued per this many ms.
WEBHOOK_PROGRESS_EVERY_MS = 1000

# Bits of what JobStore.renew returns for a job whose lease it renewed.
RENEW_CANCEL = 1
RENEW_PREVIEW = 2
# What of a progress event the job document keeps: training's loss and lr stay in the
# events; ``waiting`` (the worker holds the job, its engine has not run it yet) and
# ``wait_seconds`` (how long that lasted) let the API tell waiting from running.
PROGRESS_FIELDS = ("step", "total", "fraction", "waiting", "wait_seconds")


class QueueFull(Exception):
    """The queue of this kind of job is at its limit."""


class ClientLimit(Exception):
    """This client has as many unfinished jobs as it may."""


class IdempotencyConflict(Exception):
    """An Idempotency-Key reused with a different request body."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


@dataclass(frozen=True)
class Submission:
    """What :meth:`JobStore.create` did: a new job, or the replay of an earlier one."""

    job_id: str
    created: bool
    # A created job: its document as stored and its place in the queue (0 = next), so the
    # API can answer without reading it back.
    doc: dict[str, Any] | None = None
    position: int | None = None


@dataclass(frozen=True)
class Claim:
    """A job this worker now runs: ``attempt`` is its fencing token."""

    job_id: str
    attempt: int
    doc: dict[str, Any]


# -- helpers ----------------------------------------------------------------------------------
def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def fingerprint(body: Any) -> str:
    """A digest of a request body (canonical JSON), to bind an Idempotency-Key to it."""
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


def store_from_settings(settings: Any, client: redis.Redis | None = None) -> JobStore:
    """The job store that ``settings`` (an :class:`app.core.settings.Settings`) describe."""
    s = settings
    return JobStore(
        client or connect(s),
        s.key_prefix,
        s.job_ttl,
        s.events_maxlen,
        lease_ttl=s.lease_ttl,
        events_ttl=s.events_ttl,
        max_attempts=s.max_attempts,
        replicated_ack=s.replicated_ack,
        ack_timeout=s.redis_ack_timeout,
    )


def parse_doc(raw: dict[str, str]) -> dict[str, Any] | None:
    """A job document from its hash (every field JSON); None for a missing job."""
    return {k: json.loads(v) for k, v in raw.items()} if raw else None


def _pairs(fields: dict[str, Any]) -> list[str]:
    return [x for k, v in fields.items() for x in (k, json.dumps(v))]


def _submission(
    res: list[Any], job_id: str, doc: dict[str, Any], kind: str, client: str
) -> Submission:
    """What the create script answered, as :meth:`JobStore.create` returns or raises it."""
    outcome = res[0]
    if outcome == "created":
        return Submission(job_id, True, doc, int(res[2]))
    if outcome == "replay":
        return Submission(res[1], False)
    if outcome == "conflict":
        raise IdempotencyConflict(res[1])
    if outcome == "queue_full":
        raise QueueFull(kind)
    raise ClientLimit(client)


def _fence(attempt: int | None) -> str:
    """An attempt as the scripts compare it with the stored one ('' = any)."""
    return "" if attempt is None else str(attempt)


class JobStore:
    """Job documents and every transition of their lifecycle; heartbeats; stats."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "ddpm:",
        ttl: int = 86400,
        events_maxlen: int = 1000,
        *,
        lease_ttl: float = 15.0,
        events_ttl: int = 600,
        max_attempts: int = 3,
        replicated_ack: bool = False,
        ack_timeout: float = 1.0,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl = int(ttl)
        self.events_maxlen = events_maxlen
        self.lease_ms = int(lease_ttl * 1000)
        self.events_ttl = int(min(events_ttl, ttl))
        self.max_attempts = max_attempts
        # Job creation and finish return only once a replica has them (WAIT 1 timeout).
        self.replicated_ack = replicated_ack
        self.ack_timeout = ack_timeout
        self.unconfirmed_claims = 0  # claims that no replica confirmed in time (they ran)
        self._scripts = StoreScripts(client)

    def _replicated(self, run: Any) -> tuple[Any, int | None]:
        """``run(client)`` (a script call), followed on the same connection by ``WAIT 1``
        when acknowledgements must be replicated: (its result, replicas that confirmed
        it, or None when not asked)."""
        if not self.replicated_ack:
            return run(None), None
        pipe = self.r.pipeline(transaction=False)  # one connection: WAIT counts its writes
        run(pipe)
        pipe.wait(1, max(1, int(self.ack_timeout * 1000)))
        res, acked = pipe.execute()
        return res, int(acked)

    def _confirm(self, acked: int | None, what: str, job_id: str) -> None:
        """Raise :class:`NotReplicated` when a replica was asked for and none confirmed."""
        if acked is None or acked >= 1:
            return
        # The master may be cut off from the others: let the next connection ask the
        # sentinels where the master is (idle connections only; others finish first).
        self.r.connection_pool.disconnect(inuse_connections=False)
        try:
            wait_for_replica(acked, f"{what} of job {job_id}", self.ack_timeout)
        except NotReplicated as exc:
            exc.job_id = job_id  # type: ignore[attr-defined]
            raise

    # -- keys ------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def job_key(self, job_id: str, suffix: str | None = None) -> str:
        return self.key("job", job_id) + (f":{suffix}" if suffix else "")

    def qkey(self, kind: str) -> str:
        """The queue sorted set of a job kind (``generate`` -> ``queue:gen``)."""
        return self.key("queue", QUEUE_OF.get(kind, kind))

    def lkey(self, kind: str) -> str:
        """The leases of running jobs of a kind (``leases:gen``), scored by expiry (ms)."""
        return self.key("leases", QUEUE_OF.get(kind, kind))

    def _job_keys(self, job_id: str, kind: str) -> dict[str, str]:
        """The keys of a transition of a running job (:data:`scripts.JOB_KEYS`)."""
        return {
            "job": self.job_key(job_id),
            "events": self.job_key(job_id, "events"),
            "cancel": self.job_key(job_id, "cancel"),
            "queue": self.qkey(kind),
            "leases": self.lkey(kind),
            "stats": self.key("stats"),
            "expiry": self.key("expiry"),
        }

    def _common(self, job_id: str, kind: str) -> dict[str, Any]:
        """The arguments every such transition takes (:data:`scripts.COMMON`)."""
        return {
            "id": job_id,
            "prefix": self.prefix,
            "kind": kind,
            "ttl": self.ttl,
            "events_ttl": self.events_ttl,
            "maxlen": self.events_maxlen,
        }

    def _submit_keys(self, job_id: str, kind: str, client: str, idem: str) -> dict[str, str]:
        """The keys that :meth:`create` writes and :meth:`forget` removes."""
        return {
            "job": self.job_key(job_id),
            "events": self.job_key(job_id, "events"),
            "queue": self.qkey(kind),
            "stats": self.key("stats"),
            "idem": idem,
            "inflight": self.key("inflight", client),
        }

    def finished_channel(self) -> str:
        """The pub/sub channel every terminal transition publishes the job id on."""
        return self.prefix + "finished"

    # -- reads -----------------------------------------------------------------------------
    def ping(self) -> bool:
        return bool(self.r.ping())

    def get(self, job_id: str) -> dict[str, Any] | None:
        return parse_doc(self.r.hgetall(self.job_key(job_id)))

    def get_fields(self, job_id: str, *names: str) -> dict[str, Any] | None:
        """Some fields of a job's document (absent ones None); None for a missing job."""
        values = self.r.hmget(self.job_key(job_id), ["status", *names])
        if values[0] is None:
            return None
        keys = ["status", *names]
        return {k: None if v is None else json.loads(v) for k, v in zip(keys, values, strict=True)}

    async def aget_fields(
        self, ar: aredis.Redis, job_id: str, *names: str
    ) -> dict[str, Any] | None:
        """:meth:`get_fields` through the async client ``ar`` (decoded responses)."""
        keys = ["status", *names]
        values = await ar.hmget(self.job_key(job_id), keys)
        if values[0] is None:
            return None
        return {k: None if v is None else json.loads(v) for k, v in zip(keys, values, strict=True)}

    async def aget(self, ar: aredis.Redis, job_id: str) -> dict[str, Any] | None:
        """:meth:`get` through the async client ``ar`` (decoded responses), for the API's
        event loop."""
        return parse_doc(await ar.hgetall(self.job_key(job_id)))

    async def aqueue_position(self, ar: aredis.Redis, job_id: str, kind: str) -> int | None:
        rank = await ar.zrank(self.qkey(kind), job_id)
        return None if rank is None else int(rank)

    def running(self, kind: str = "generate") -> list[str]:
        """Ids of jobs of ``kind`` that hold a lease (live or expired)."""
        return list(self.r.zrange(self.lkey(kind), 0, -1))

    def expired_leases(self, kind: str, limit: int = 100) -> list[str]:
        """Running jobs whose lease has expired by the Redis clock."""
        sec, usec = self.r.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        return list(self.r.zrangebyscore(self.lkey(kind), "-inf", now_ms, start=0, num=limit))

    def queued_before(self, kind: str, ts: float, limit: int = 1000) -> list[str]:
        """Queued jobs submitted before ``ts`` (epoch seconds)."""
        return list(self.r.zrangebyscore(self.qkey(kind), "-inf", ts, start=0, num=limit))

    def queue_position(self, job_id: str, kind: str = "generate") -> int | None:
        rank = self.r.zrank(self.qkey(kind), job_id)
        return None if rank is None else int(rank)

    def queue_depth(self, kind: str = "generate") -> int:
        return int(self.r.zcard(self.qkey(kind)))

    def unfinished_requests(self, kind: str = "generate") -> list[dict[str, Any]]:
        """The requests of the queued and running jobs of ``kind``: the store's queue and
        lease sets (the broker's list may hold duplicates or lose messages), read together
        in one transaction, then the jobs' ``request`` fields in one more round trip. A job
        that expired meanwhile is left out."""
        with self.r.pipeline(transaction=True) as tx:
            tx.zrange(self.qkey(kind), 0, -1)
            tx.zrange(self.lkey(kind), 0, -1)
            queued, running = tx.execute()
        ids = dict.fromkeys([*queued, *running])  # a job moving between them counts once
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.job_key(job_id), "request")
            raw = pipe.execute()
        return [json.loads(v) for v in raw if v is not None]

    def read_events(
        self, job_id: str, last_id: str = "0-0", block_ms: int | None = None, count: int = 100
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Events after ``last_id`` as (id, event, data); blocks up to ``block_ms``."""
        res = self.r.xread({self.job_key(job_id, "events"): last_id}, count=count, block=block_ms)
        out = []
        for _key, entries in res or []:
            for eid, fields in entries:
                out.append(
                    (eid, fields.get("event", "message"), json.loads(fields.get("data", "{}")))
                )
        return out

    # -- transitions -----------------------------------------------------------------------
    def create(
        self,
        kind: str,
        request: dict[str, Any],
        extra: dict[str, Any] | None = None,
        *,
        client: str = "anon",
        idem_key: str | None = None,
        body_fingerprint: str = "",
        queue_limit: int = -1,
        client_limit: int = 0,
        job_id: str | None = None,
        message: tuple[str, str] | None = None,
        deadline_seconds: float | None = None,
    ) -> Submission:
        """Create a queued job, atomically with its queue entry, first event and counters.

        An ``idem_key`` (already scoped by the caller: client and endpoint) seen before with
        the same ``body_fingerprint`` returns the earlier job (``created`` False); with
        another body it raises :class:`IdempotencyConflict`. Raises :class:`QueueFull` or
        :class:`ClientLimit` at the limits (``queue_limit`` < 0 and ``client_limit`` 0 mean
        none). ``message`` (broker list key, message) is pushed with a created job, in the
        same atomic step (:class:`app.core.queue.TaskMessages`). A job with
        ``deadline_seconds`` that has not started by then never runs: it is canceled
        (reason ``deadline``); one still running then stops at its next step.

        With ``replicated_ack``, a created (or replayed) job that no replica confirmed
        within ``ack_timeout`` raises :class:`NotReplicated` (its ``job_id`` says which):
        the job IS stored on the master; a retry with the same ``idem_key`` returns it."""
        job_id, doc, call = self._create_call(
            kind, request, extra, client, idem_key, body_fingerprint, queue_limit,
            client_limit, job_id, message, deadline_seconds,
        )  # fmt: skip
        res, acked = self._replicated(lambda pipe: self._scripts.create(client=pipe, **call))
        if res[0] in ("created", "replay"):
            self._confirm(acked, "creation", job_id if res[0] == "created" else res[1])
        return _submission(res, job_id, doc, kind, client)

    async def acreate(
        self,
        ar: aredis.Redis,
        kind: str,
        request: dict[str, Any],
        extra: dict[str, Any] | None = None,
        *,
        client: str = "anon",
        idem_key: str | None = None,
        body_fingerprint: str = "",
        queue_limit: int = -1,
        client_limit: int = 0,
        job_id: str | None = None,
        message: tuple[str, str] | None = None,
        deadline_seconds: float | None = None,
    ) -> Submission:
        """:meth:`create` through the async client ``ar`` (decoded responses), for the API's
        event loop: the same script, arguments and outcomes. With ``replicated_ack`` it is
        :meth:`create` in a thread (its WAIT for a replica, and the wait after a refusal,
        block)."""
        if self.replicated_ack:
            return await asyncio.to_thread(
                self.create, kind, request, extra, client=client, idem_key=idem_key,
                body_fingerprint=body_fingerprint, queue_limit=queue_limit,
                client_limit=client_limit, job_id=job_id, message=message,
                deadline_seconds=deadline_seconds,
            )  # fmt: skip
        job_id, doc, call = self._create_call(
            kind, request, extra, client, idem_key, body_fingerprint, queue_limit,
            client_limit, job_id, message, deadline_seconds,
        )  # fmt: skip
        res = await self._scripts.create.acall(ar, **call)
        return _submission(res, job_id, doc, kind, client)

    def _create_call(
        self,
        kind: str,
        request: dict[str, Any],
        extra: dict[str, Any] | None,
        client: str,
        idem_key: str | None,
        body_fingerprint: str,
        queue_limit: int,
        client_limit: int,
        job_id: str | None,
        message: tuple[str, str] | None,
        deadline_seconds: float | None,
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The job id, the document and the create script's keys and arguments."""
        job_id = job_id or new_job_id()
        created_ts = time.time()
        doc = {
            "id": job_id,
            "kind": kind,
            "status": "queued",
            "created_at": now_iso(),
            "created_ts": created_ts,
            "client": client,
            "request": request,
            "attempts": 0,
            "progress": {"step": 0, "total": 0, "fraction": 0.0},
        } | (extra or {})
        idem = self.key("idem", idem_key) if idem_key else ""
        if idem:
            doc["idem"] = idem
        if deadline_seconds:
            doc["deadline_at"] = _iso(created_ts + deadline_seconds)
        broker, body = message or ("", "")
        call = {
            "keys": self._submit_keys(job_id, kind, client, idem) | {"broker": broker},
            "args": {
                "id": job_id,
                "prefix": self.prefix,
                "kind": kind,
                "ttl": self.ttl,
                "maxlen": self.events_maxlen,
                "queue_limit": queue_limit,
                "client_limit": client_limit,
                "fingerprint": body_fingerprint,
                "created_ts": repr(created_ts),
                "message": body,
                "deadline_ms": int(deadline_seconds * 1000) if deadline_seconds else 0,
                "fields": _pairs(doc),
            },
        }
        return job_id, doc, call

    def forget(
        self, job_id: str, kind: str, client: str = "anon", idem_key: str | None = None
    ) -> None:
        """Undo :meth:`create` (the job was never handed to anyone)."""
        self._scripts.forget(
            keys=self._submit_keys(
                job_id, kind, client, self.key("idem", idem_key) if idem_key else ""
            ),
            args={"id": job_id, "kind": kind},
        )

    def claim(self, job_id: str, kind: str, worker: str) -> Claim | None:
        """queued -> running with a fresh lease and the next attempt number (the fencing
        token). None when the job is not queued (running elsewhere, finished, gone); a job
        whose cancel flag is set is canceled instead. With ``replicated_ack`` it waits for
        a replica too (up to ``ack_timeout``), but runs the job without one."""
        keys = self._job_keys(job_id, kind)
        args = self._common(job_id, kind) | {
            "lease_ms": self.lease_ms,
            "worker": json.dumps(worker),
            "started_at": json.dumps(now_iso()),
            "started_ts": json.dumps(time.time()),
            "cancel_done": _CANCELED_QUEUED_DONE,
            "deadline_error": _DEADLINE_ERROR,
            "deadline_done": _DEADLINE_DONE,
        }
        res, acked = self._replicated(
            lambda pipe: self._scripts.claim(keys=keys, args=args, client=pipe)
        )
        if res[0] != "claimed":
            return None
        if acked == 0:
            # Not an acknowledgement to anyone: the job runs all the same. The replica's
            # copy matters after a failover, where the new master must know this attempt
            # (the fencing token) so that no other worker claims the same number.
            self.unconfirmed_claims += 1
        flat = res[2]
        doc = {flat[i]: json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
        return Claim(job_id, int(res[1]), doc)

    def renew(
        self,
        kind: str,
        held: dict[str, int],
        progress: dict[str, dict[str, Any]] | None = None,
        previews: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, int]:
        """Renew the leases of ``held`` (job id -> attempt) and write pending ``progress`` (job
        id -> event data; its ``PROGRESS_FIELDS`` also go to the document) and ``previews``
        (job id -> ``preview`` event data), in one round trip. Returns job id -> -1 (lease
        lost: stop, the result would be discarded) or a bit set: ``RENEW_CANCEL`` (cancel
        requested), ``RENEW_PREVIEW`` (a client watches the preview, :meth:`want_preview`)."""
        progress = progress or {}
        previews = previews or {}
        pipe = self.r.pipeline(transaction=False)
        ids = list(held)
        for job_id in ids:
            data = progress.get(job_id)
            doc_progress = (
                json.dumps({k: data[k] for k in PROGRESS_FIELDS if k in data}) if data else ""
            )
            self._scripts.renew(
                keys={
                    "job": self.job_key(job_id),
                    "events": self.job_key(job_id, "events"),
                    "cancel": self.job_key(job_id, "cancel"),
                    "leases": self.lkey(kind),
                    "preview": self.job_key(job_id, "preview"),
                },
                args={
                    "id": job_id,
                    "prefix": self.prefix,
                    "attempt": held[job_id],
                    "lease_ms": self.lease_ms,
                    "ttl": self.ttl,
                    "maxlen": self.events_maxlen,
                    "progress": doc_progress,
                    "progress_event": json.dumps(data) if data else "",
                    "preview_event": json.dumps(previews[job_id]) if job_id in previews else "",
                    "webhook_every_ms": WEBHOOK_PROGRESS_EVERY_MS,
                },
                client=pipe,
            )
        return {job_id: int(v) for job_id, v in zip(ids, pipe.execute(), strict=True)}

    def finish(
        self,
        job_id: str,
        kind: str,
        status: str,
        attempt: int | None,
        *,
        allowed: Iterable[str] = ("running",),
        stats: Sequence[tuple[str, float]] = (),
        **fields: Any,
    ) -> bool:
        """Move a job to a terminal ``status`` with ``fields`` (result, error, metrics...),
        its last ``progress`` event (when ``fields`` has one), ``status`` and ``done`` events
        and counters, in one step. ``attempt`` fences it: a worker whose attempt is no
        longer the job's changes nothing (False). With ``replicated_ack`` it raises
        :class:`NotReplicated` when no replica confirmed it; calling it again is safe (the
        attempt's outcome is recorded once, and the retry waits for a replica again)."""
        fields = {"finished_at": now_iso(), "finished_ts": time.time()} | fields
        done = {"status": status} | {k: fields[k] for k in ("result", "error") if k in fields}
        keys = self._job_keys(job_id, kind)
        args = self._common(job_id, kind) | {
            "attempt": _fence(attempt),
            "to": status,
            "allowed": ",".join(allowed),
            "done": json.dumps(done),
            "progress": json.dumps(fields["progress"]) if "progress" in fields else "",
            "deadline_error": _DEADLINE_ERROR,
            "deadline_done": _DEADLINE_DONE,
            "counters": [x for name, amount in stats for x in (name, repr(float(amount)))],
            "fields": _pairs(fields),
        }
        res, acked = self._replicated(
            lambda pipe: self._scripts.finish(keys=keys, args=args, client=pipe)
        )
        if res[0] not in ("done", "done_before"):  # done_before: this attempt's retry
            return False
        self._confirm(acked, "finish", job_id)
        return True

    def cancel(self, job_id: str, kind: str) -> tuple[str, str | None]:
        """Cancel: ``canceled`` (it was queued: it never starts), ``requested`` (running: its
        worker stops at the next step), ``finished`` (too late; with its status) or
        ``gone``. Returns (outcome, terminal status or None)."""
        res = self._scripts.cancel(
            keys=self._job_keys(job_id, kind),
            args=self._common(job_id, kind) | {"cancel_done": _CANCELED_QUEUED_DONE},
        )
        return res[0], (json.loads(res[1]) if len(res) > 1 else None)

    def requeue(self, job_id: str, kind: str, attempt: int | None = None) -> str:
        """A running job whose lease expired: ``requeued`` (its worker is gone; it runs
        again), ``failed`` (max attempts reached), ``canceled`` (cancel was requested),
        ``alive`` (the lease was renewed meanwhile) or ``gone``. With ``attempt``, the
        worker running that attempt gives the job back (``stale`` if it is not its own)."""
        attempts_left = f"its worker stopped responding {self.max_attempts} times"
        lost = {"type": "WorkerLost", "message": f"gave up: {attempts_left}"}
        canceled = {"type": "Canceled", "message": "canceled while its worker was lost"}
        res = self._scripts.requeue(
            keys=self._job_keys(job_id, kind),
            args=self._common(job_id, kind)
            | {
                "max_attempts": self.max_attempts,
                "fail_done": json.dumps({"status": "failed", "error": lost}),
                "cancel_done": json.dumps({"status": "canceled", "error": canceled}),
                "fail_error": json.dumps(lost),
                "cancel_error": json.dumps(canceled),
                "attempt": _fence(attempt),
            },
        )
        return res[0]

    def expire_deadlines(self, limit: int = 100) -> int:
        """Jobs past their deadline: queued ones canceled (reason ``deadline``; returns how
        many), running ones told to stop at their next step. Idempotent; run by every
        reaper pass and by the API, so it holds with every worker down."""
        sec, usec = self.r.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        due = self.r.zrangebyscore(self.key("deadlines"), "-inf", now_ms, start=0, num=limit)
        canceled = 0
        for job_id in due:
            kind = json.loads(self.r.hget(self.job_key(job_id), "kind") or '"generate"')
            now = time.time()
            res = self._scripts.deadline(
                keys=self._job_keys(job_id, kind) | {"deadlines": self.key("deadlines")},
                args=self._common(job_id, kind)
                | {
                    "deadline_error": _DEADLINE_ERROR,
                    "deadline_done": _DEADLINE_DONE,
                    "finished_at": json.dumps(_iso(now)),
                    "finished_ts": json.dumps(now),
                },
            )
            canceled += res[0] == "canceled"
        return canceled

    # -- live previews ---------------------------------------------------------------------
    def want_preview(self, job_id: str, ttl: float = 10.0) -> None:
        """Say that a client watches ``job_id``'s live preview for the next ``ttl`` seconds
        (refresh it while watching). The job's worker learns it at its next lease renewal;
        nobody watching costs the worker nothing."""
        self.r.set(self.job_key(job_id, "preview"), "1", px=max(1, int(ttl * 1000)))

    # -- events ----------------------------------------------------------------------------
    def add_event(self, job_id: str, event: str, data: dict[str, Any]) -> str:
        key = self.job_key(job_id, "events")
        pipe = self.r.pipeline()
        pipe.xadd(
            key,
            {"event": event, "data": json.dumps(data)},
            maxlen=self.events_maxlen,
            approximate=True,
        )
        pipe.expire(key, self.ttl)
        return pipe.execute()[0]

    # -- retention -------------------------------------------------------------------------
    def expired_jobs(self, limit: int = 100) -> list[str]:
        """Finished jobs whose documents have expired: their results can go."""
        return list(self.r.zrangebyscore(self.key("expiry"), "-inf", time.time(), 0, limit))

    def forget_expired(self, job_ids: list[str]) -> None:
        if job_ids:
            self.r.zrem(self.key("expiry"), *job_ids)

    # -- workers ---------------------------------------------------------------------------
    def heartbeat(self, name: str, info: dict[str, Any], ttl: float) -> None:
        payload = info | {"name": name, "time": time.time()}
        self.r.set(self.key("worker", name), json.dumps(payload), px=int(ttl * 1000))

    def remove_heartbeat(self, name: str) -> None:
        self.r.delete(self.key("worker", name))

    def workers(self) -> list[dict[str, Any]]:
        keys = list(self.r.scan_iter(match=self.key("worker", "*"), count=100))
        vals = self.r.mget(keys) if keys else []
        return [json.loads(v) for v in vals if v]

    def redis_uptime(self) -> float:
        """Seconds since the Redis server started (leases need that long to be trusted)."""
        return float(self.r.info("server").get("uptime_in_seconds", 0))

    # -- stats (for /metrics) --------------------------------------------------------------
    def incr_stat(self, field: str, amount: float = 1) -> None:
        self.r.hincrbyfloat(self.key("stats"), field, amount)

    def observe(self, name: str, values: Sequence[float], buckets: Sequence[float]) -> None:
        """Add observations to a histogram kept as hash fields (one round trip)."""
        if not values:
            return
        total: collections.Counter[str] = collections.Counter()
        for value in values:
            for f, amount in histogram_fields(name, value, buckets):
                total[f] += amount
        pipe = self.r.pipeline(transaction=False)
        for f, amount in total.items():
            pipe.hincrbyfloat(self.key("stats"), f, amount)
        pipe.execute()

    def stats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.r.hgetall(self.key("stats")).items()}


_CANCELED_QUEUED = {"type": "Canceled", "message": "canceled before it started"}
# The done event of a job canceled while queued (by cancel, or by a claim that finds the flag).
_CANCELED_QUEUED_DONE = json.dumps({"status": "canceled", "error": _CANCELED_QUEUED})

_DEADLINE = {"type": "Canceled", "message": "its deadline passed", "reason": "deadline"}
# The error and done event of a job its deadline canceled (queued, or stopped running).
_DEADLINE_ERROR = json.dumps(_DEADLINE)
_DEADLINE_DONE = json.dumps({"status": "canceled", "error": _DEADLINE})
