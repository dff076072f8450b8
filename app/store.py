"""The job store: job documents, event streams, flags and heartbeats in Redis.

Keys (all under the configured prefix, ``ddpm:`` by default)::

    job:{id}            hash, one JSON value per field of the job document
    job:{id}:events     stream (capped with MAXLEN), the SSE source
    job:{id}:cancel     cancel flag
    job:{id}:lease      the worker currently running the job (short TTL)
    queue:{kind}        sorted set by submit time, for queue positions (gen, train)
    active:{kind}       sorted set of running jobs by start time
    idem:{key}          Idempotency-Key -> job id
    worker:{name}       heartbeat (JSON) with a TTL
    stats               counters and histogram buckets for /metrics

Every key of a job carries the job TTL. The job hash is the source of truth.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

__all__ = ["JobStore", "connect", "now_iso", "new_job_id", "JOB_ID_RE"]

QUEUE_OF = {"generate": "gen", "train": "train"}
JOB_ID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
cur = cjson.decode(cur)
local ok = false
for s in string.gmatch(ARGV[3], '[^,]+') do if s == cur then ok = true end end
if not ok then return {0, cur} end
redis.call('HSET', KEYS[1], 'status', cjson.encode(ARGV[2]))
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return {1, cur}
"""

_LEASE = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_job_id() -> str:
    return str(uuid.uuid4())


def connect(url: str, decode: bool = True) -> redis.Redis:
    """A redis-py client with short timeouts, so that an unreachable Redis fails fast."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_connect_timeout=3,
        socket_timeout=10,
        health_check_interval=30,
    )


class JobStore:
    """Job documents and their events, flags, leases; worker heartbeats; stats."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "ddpm:",
        ttl: int = 86400,
        events_maxlen: int = 1000,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl = int(ttl)
        self.events_maxlen = events_maxlen
        self._transition = client.register_script(_TRANSITION)
        self._lease = client.register_script(_LEASE)

    # -- keys ------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def job_key(self, job_id: str, suffix: str | None = None) -> str:
        return self.key("job", job_id) + (f":{suffix}" if suffix else "")

    # -- jobs ------------------------------------------------------------------------------
    def ping(self) -> bool:
        return bool(self.r.ping())

    def qkey(self, kind: str) -> str:
        """The queue sorted set of a job kind (``generate`` -> ``queue:gen``)."""
        return self.key("queue", QUEUE_OF.get(kind, kind))

    def akey(self, kind: str) -> str:
        """The sorted set of running jobs of a kind (``active:gen``), by start time."""
        return self.key("active", QUEUE_OF.get(kind, kind))

    def running(self, kind: str = "generate") -> list[str]:
        """Ids of jobs of ``kind`` that are (or were, if their worker died) running."""
        return list(self.r.zrange(self.akey(kind), 0, -1))

    def lease_held(self, job_id: str) -> bool:
        return bool(self.r.exists(self.job_key(job_id, "lease")))

    def queue_depth(self, kind: str = "generate") -> int:
        return int(self.r.zcard(self.qkey(kind)))

    def idempotent_job(self, idem_key: str) -> str | None:
        return self.r.get(self.key("idem", idem_key))

    def create(
        self,
        kind: str,
        request: dict[str, Any],
        extra: dict[str, Any] | None = None,
        idem_key: str | None = None,
        job_id: str | None = None,
    ) -> tuple[str, bool]:
        """Create a queued job; returns (id, created). An Idempotency-Key seen before
        returns the earlier job's id and False."""
        job_id = job_id or new_job_id()
        if idem_key is not None:
            ok = self.r.set(self.key("idem", idem_key), job_id, nx=True, ex=self.ttl)
            if not ok:
                existing = self.r.get(self.key("idem", idem_key))
                if existing and self.r.exists(self.job_key(existing)):
                    return existing, False
                self.r.set(self.key("idem", idem_key), job_id, ex=self.ttl)
        doc = {
            "id": job_id,
            "kind": kind,
            "status": "queued",
            "created_at": now_iso(),
            "created_ts": time.time(),
            "request": request,
            "attempts": 0,
            "progress": {"step": 0, "total": 0, "fraction": 0.0},
        } | (extra or {})
        pipe = self.r.pipeline()
        pipe.hset(self.job_key(job_id), mapping={k: json.dumps(v) for k, v in doc.items()})
        pipe.expire(self.job_key(job_id), self.ttl)
        pipe.zadd(self.qkey(kind), {job_id: doc["created_ts"]})
        # Jobs that expired while queued leave the queue (their keys are gone).
        pipe.zremrangebyscore(self.qkey(kind), 0, doc["created_ts"] - self.ttl)
        pipe.execute()
        self.add_event(job_id, "status", {"status": "queued"})
        self.incr_stat(f"jobs_submitted:{kind}")
        return job_id, True

    def forget_submission(self, job_id: str, kind: str, idem_key: str | None = None) -> None:
        """Undo :meth:`create` when the broker refused the task."""
        pipe = self.r.pipeline()
        pipe.delete(self.job_key(job_id), self.job_key(job_id, "events"))
        pipe.zrem(self.qkey(kind), job_id)
        if idem_key:
            pipe.delete(self.key("idem", idem_key))
        pipe.execute()

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(self.job_key(job_id))
        if not raw:
            return None
        return {k: json.loads(v) for k, v in raw.items()}

    def queue_position(self, job_id: str, kind: str = "generate") -> int | None:
        rank = self.r.zrank(self.qkey(kind), job_id)
        return None if rank is None else int(rank)

    def update(self, job_id: str, **fields: Any) -> None:
        key = self.job_key(job_id)
        pipe = self.r.pipeline()
        pipe.hset(key, mapping={k: json.dumps(v) for k, v in fields.items()})
        pipe.expire(key, self.ttl)
        pipe.execute()

    def transition(
        self, job_id: str, allowed: Iterable[str], to: str, **fields: Any
    ) -> tuple[bool, str | None]:
        """Atomically move a job whose status is in ``allowed`` to ``to`` (setting
        ``fields`` too). Returns (done, previous status); previous None = no such job."""
        args: list[Any] = [self.ttl, to, ",".join(allowed)]
        for k, v in fields.items():
            args += [k, json.dumps(v)]
        res = self._transition(keys=[self.job_key(job_id)], args=args)
        if not res:
            return False, None
        done, prev = res
        return bool(done), prev

    def start(self, job_id: str, kind: str, worker: str) -> tuple[bool, dict | None]:
        """queued|running -> running (running again after a redelivery)."""
        ok, prev = self.transition(
            job_id, ("queued", "running"), "running", started_at=now_iso(), worker=worker
        )
        if ok:
            self.r.zrem(self.qkey(kind), job_id)
            now = time.time()
            self.r.zadd(self.akey(kind), {job_id: now})
            self.r.zremrangebyscore(self.akey(kind), 0, now - self.ttl)
            self.r.hincrby(self.job_key(job_id), "attempts", 1)
            self.add_event(job_id, "status", {"status": "running"})
        return ok, self.get(job_id)

    def finish(
        self,
        job_id: str,
        kind: str,
        status: str,
        allowed: tuple[str, ...] = ("queued", "running"),
        **fields: Any,
    ) -> bool:
        """Move a live job to a terminal status, emit the final ``done`` event."""
        ok, _ = self.transition(job_id, allowed, status, finished_at=now_iso(), **fields)
        if not ok:
            return False
        self.r.zrem(self.qkey(kind), job_id)
        self.r.zrem(self.akey(kind), job_id)
        done = {"status": status} | {k: fields[k] for k in ("result", "error") if k in fields}
        self.add_event(job_id, "status", {"status": status})
        self.add_event(job_id, "done", done)
        self.incr_stat(f"jobs_finished:{kind}:{status}")
        return True

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

    # -- cancel flag and leases ------------------------------------------------------------
    def request_cancel(self, job_id: str) -> None:
        self.r.set(self.job_key(job_id, "cancel"), "1", ex=self.ttl)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(self.job_key(job_id, "cancel")))

    def cancel_flags(self, job_ids: list[str]) -> list[bool]:
        """Whether each job's cancel flag is set, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(self.job_key(job_id, "cancel"))
        return [bool(n) for n in pipe.execute()]

    def record_progress(self, updates: dict[str, dict[str, Any]]) -> None:
        """The progress of many jobs in one round trip: job hash field and a progress event."""
        pipe = self.r.pipeline(transaction=False)
        for job_id, progress in updates.items():
            key, events = self.job_key(job_id), self.job_key(job_id, "events")
            pipe.hset(key, "progress", json.dumps(progress))
            pipe.expire(key, self.ttl)
            pipe.xadd(
                events,
                {"event": "progress", "data": json.dumps(progress)},
                maxlen=self.events_maxlen,
                approximate=True,
            )
            pipe.expire(events, self.ttl)
        pipe.execute()

    def acquire_lease(self, job_id: str, owner: str, ttl: float) -> bool:
        """Take or refresh the lease of a running job; False if another owner holds it."""
        return bool(
            self._lease(keys=[self.job_key(job_id, "lease")], args=[owner, int(ttl * 1000)])
        )

    def release_lease(self, job_id: str, owner: str) -> None:
        key = self.job_key(job_id, "lease")
        if self.r.get(key) == owner:
            self.r.delete(key)

    # -- workers ---------------------------------------------------------------------------
    def heartbeat(self, name: str, info: dict[str, Any], ttl: float) -> None:
        payload = info | {"name": name, "time": time.time()}
        self.r.set(self.key("worker", name), json.dumps(payload), px=int(ttl * 1000))

    def workers(self) -> list[dict[str, Any]]:
        keys = list(self.r.scan_iter(match=self.key("worker", "*"), count=100))
        vals = self.r.mget(keys) if keys else []
        return [json.loads(v) for v in vals if v]

    # -- stats (for /metrics, written by workers) -------------------------------------------
    def incr_stat(self, field: str, amount: float = 1) -> None:
        self.r.hincrbyfloat(self.key("stats"), field, amount)

    def observe(self, name: str, value: float, buckets: Sequence[float]) -> None:
        """Add one observation to a cumulative histogram kept as hash fields."""
        pipe = self.r.pipeline()
        key = self.key("stats")
        for b in buckets:
            if value <= b:
                pipe.hincrbyfloat(key, f"{name}_bucket:{b}", 1)
        pipe.hincrbyfloat(key, f"{name}_bucket:+Inf", 1)
        pipe.hincrbyfloat(key, f"{name}_sum", value)
        pipe.hincrbyfloat(key, f"{name}_count", 1)
        pipe.execute()

    def stats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.r.hgetall(self.key("stats")).items()}
