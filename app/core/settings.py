"""All service settings in one place, from ``DDPM_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "Settings",
    "get_settings",
    "redis_url_file",
    "with_password",
    "parse_sentinels",
    "settings_error",
]

_MASTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Settings(BaseSettings):
    """Service configuration. ``redis_url`` None means the embedded Redis of ``ddpm serve``."""

    model_config = SettingsConfigDict(env_prefix="DDPM_", extra="ignore")

    redis_url: str | None = None
    redis_password: str | None = Field(
        None, description="Redis password, added to redis_url when the URL carries none"
    )
    redis_sentinels: str | None = Field(
        None,
        description="Redis Sentinel nodes, host:port,host:port,...: the master is whatever "
        "they name (redis_master_name); takes the place of redis_url. Unset = redis_url",
    )
    redis_master_name: str = Field(
        "ddpm", pattern=_MASTER_NAME, description="the master's name in the Sentinel config"
    )
    redis_replicated_ack: bool | None = Field(
        None,
        description="a job is acknowledged (202, finish) only once a replica has it (WAIT); "
        "unset = on with redis_sentinels, off without",
    )
    redis_ack_timeout: float = Field(
        1.0, gt=0, le=60, description="seconds a write waits for a replica (replicated_ack)"
    )
    redis_maxmemory: str | None = Field(
        None, description='memory cap of the embedded Redis, e.g. "2gb" (noeviction)'
    )
    data_dir: Path = Path("data")
    device: str = "auto"
    train_devices: str = Field(
        "auto",
        pattern=r"^(auto|cpu(:[1-9][0-9]{0,2})?|[0-9]{1,3}(,[0-9]{1,3}){0,63})$",
        description="what a train worker trains on: auto (every visible GPU; one process on "
        "a CPU host), GPU indices such as 0,1 (one process each), or cpu:N (N processes)",
    )
    max_count: int = Field(64, ge=1)
    max_steps: int = Field(1000, ge=1)
    max_batch: int = Field(64, ge=1)
    queue_limit: int = Field(256, ge=0)
    job_ttl: int = Field(
        24 * 3600,
        ge=60,
        description="seconds a finished job (document, results) is kept",
    )
    default_checkpoint: str = "digits"
    result_store: Literal["disk", "redis", "s3"] = Field(
        "disk", description="where images go: disk (DATA_DIR), redis, or s3 (the object store)"
    )
    object_store: str | None = Field(
        None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?$",
        description="s3://bucket/prefix: checkpoints (and results with result_store=s3) in an "
        "S3-compatible object store, for workers that share no disk (needs the s3 extra)",
    )
    s3_endpoint_url: str | None = Field(
        None, description="endpoint of an S3-compatible store other than AWS (MinIO, ...)"
    )
    result_url_seconds: int = Field(
        0,
        ge=0,
        le=7 * 24 * 3600,
        description="with result_store=s3: image URLs redirect (307) to a presigned URL valid "
        "this many seconds, so the bytes do not pass through the API; 0 = the API serves them",
    )
    checkpoint_cache_size: int = Field(
        8, ge=1, description="checkpoint versions a worker keeps downloaded from the object store"
    )
    api_keys: str = Field("", description="comma-separated keys; empty = no key needed")
    admin_token: str | None = None
    log_level: str = "INFO"
    log_format: Literal["kv", "json"] = "kv"
    metrics_checkpoints: int = Field(
        10,
        ge=1,
        le=1000,
        description="checkpoints /metrics labels by name (the busiest); the rest are _other",
    )
    access_log: bool = Field(
        False,
        description="uvicorn's line per HTTP request (the API logs every job it accepts "
        "anyway; at hundreds of requests per second the lines cost a tenth of its CPU)",
    )
    max_body_bytes: int = Field(64 * 1024, ge=256)
    key_prefix: str = "ddpm:"
    visibility_timeout: int = Field(3600, ge=1, description="broker redelivery timeout (s)")
    restore_interval: int | None = Field(
        None, ge=1, description="seconds between scans for unacked messages to redeliver"
    )
    lease_ttl: float = Field(
        15.0, gt=0, description="seconds a running job's lease lives unless its worker renews it"
    )
    max_attempts: int = Field(3, ge=1, description="runs of a job before a lost worker fails it")
    reaper_interval: float = Field(2.0, gt=0, description="seconds between reaper passes")
    redispatch_after: float = Field(
        30.0, gt=0, description="seconds a queued job may lack a broker message before re-sent"
    )
    store_retry_seconds: float = Field(
        600.0, ge=0, description="how long a worker retries recording a job while Redis is down"
    )
    stall_timeout: float = Field(
        600.0, gt=0, description="seconds without engine/training progress before leases lapse"
    )
    events_ttl: int = Field(
        600, ge=10, description="seconds a finished job keeps its event stream (SSE replay)"
    )
    max_jobs_per_client: int = Field(
        64, ge=0, description="unfinished jobs one client (API key) may have; 0 = no limit"
    )
    train_queue_limit: int = Field(8, ge=0, description="training jobs that may wait")
    heartbeat_ttl: float = Field(10.0, gt=0)
    gen_concurrency: int = Field(
        128,
        ge=1,
        description="jobs a gen worker runs at once (Celery threads, each waiting on the "
        "engine); single-image jobs batch no wider than this, so keep it >= DDPM_MAX_BATCH",
    )
    torch_threads: int | None = Field(None, ge=1, description="CPU threads of the engine")
    channels_last: bool = Field(True, description="run the network in channels-last layout")
    compile: bool = Field(False, description="torch.compile the network (batch-size buckets)")
    compile_mode: str | None = Field(None, description='e.g. "reduce-overhead" (CUDA graphs)')
    autocast: Literal["auto", "bf16", "none"] = Field(
        "auto",
        description="bf16 autocast of the network: auto = on CUDA with bf16, and on a CPU "
        "with native bf16 where it measures at least 1.2x faster for the model; none = fp32",
    )
    knee_fraction: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="rows per network call stop at the smallest batch reaching this fraction "
        "of the model's best measured images/s (0 = up to max_batch or memory)",
    )
    starve_after: float = Field(
        30.0,
        ge=0.0,
        description="seconds after which a waiting job goes ahead of shorter ones (0 = never)",
    )
    warm_checkpoint: bool = Field(
        True,
        description="load and tune the default checkpoint when a gen worker starts, not in "
        "its first job",
    )
    soft_shutdown_timeout: float = Field(
        300.0, ge=0, description="seconds a stopping worker lets running jobs finish"
    )
    model_cache_size: int = Field(2, ge=1)
    progress_interval: float = Field(0.25, ge=0.0, description="min seconds between updates")
    max_trajectory_frames: int = Field(64, ge=0)
    preview_interval: float = Field(
        0.5, ge=0.0, description="min seconds between live preview grids of a watched job"
    )
    events_maxlen: int = Field(1000, ge=10)
    # Model size, computed from a config before anything is allocated (checkpoint loads,
    # POST /generate, POST /train). Defaults equal ddpm_core.config.size's DEFAULT_MAX_*.
    max_model_params: int = Field(
        200_000_000, ge=1, description="largest UNet (parameters) a checkpoint or run may have"
    )
    max_activation_bytes: int = Field(
        8 * 2**30,
        ge=1,
        description="largest estimated float32 activation memory of one image's forward pass",
    )

    # Server-Sent Events (GET /jobs/{id}/events): caps are per API process.
    max_streams: int = Field(1000, ge=1, description="open event streams, all clients")
    max_streams_per_client: int = Field(
        50, ge=1, description="open event streams per client (API key, or address when anonymous)"
    )
    stream_lifetime: float = Field(
        300.0, gt=0, description="seconds after which the server ends a stream (clients resume)"
    )
    stream_keepalive: float = Field(15.0, gt=0, description="seconds between keep-alive comments")
    # The API declares long polls of up to 60 s; this holds them shorter (below the idle
    # timeout of a proxy in front, say): the answer then comes earlier, still a 202.
    max_wait: float = Field(
        60.0,
        gt=0,
        le=60.0,
        description="seconds a long poll (GET /jobs/{id}?wait=N, Prefer: wait=N) holds at most",
    )
    stream_retry_ms: int = Field(2000, ge=0, description="reconnect delay hinted to SSE clients")

    # Webhooks (app/core/webhooks): the outbox in Redis, delivered by a dispatcher thread in
    # every API process (leased: several never deliver the same event at once).
    webhook_secret: str | None = Field(
        None,
        pattern=r"^whsec_[A-Za-z0-9+/=]{16,256}$",
        description="Standard Webhooks signing secret (whsec_ + base64); unset = generated "
        "into DATA_DIR/webhook_secret (mode 0600). Set it when API replicas share no disk",
    )
    webhook_dispatcher: bool = Field(
        True, description="run the webhook dispatcher in this API process"
    )
    webhook_timeout: float = Field(
        10.0, gt=0, le=120, description="seconds one delivery may take to connect, send, answer"
    )
    webhook_max_attempts: int = Field(
        12, ge=1, le=100, description="attempts of a delivery before it is recorded failed"
    )
    webhook_backoff: float = Field(
        5.0, gt=0, description="seconds before the first retry; doubled each attempt, jittered"
    )
    webhook_backoff_max: float = Field(
        900.0, gt=0, description="longest wait between two attempts (before jitter)"
    )
    webhook_concurrency: int = Field(
        16, ge=1, le=1024, description="deliveries one dispatcher makes at once"
    )
    webhook_poll_interval: float = Field(
        0.2, gt=0, le=60, description="seconds between a dispatcher's looks at the outbox"
    )
    webhook_allow_private: bool = Field(
        False,
        description="allow deliveries to loopback, link-local and private addresses "
        "(tests, private deployments); refused by default, checked on the resolved address",
    )

    @property
    def model_limits(self) -> dict[str, int]:
        """The size limits as ``load_checkpoint(path, **settings.model_limits)`` takes them."""
        return {
            "max_params": self.max_model_params,
            "max_activation_bytes": self.max_activation_bytes,
        }

    @field_validator(
        "object_store", "s3_endpoint_url", "webhook_secret", "redis_sentinels", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v  # VAR= in an env file or compose: not configured

    @model_validator(mode="after")
    def _s3_results_need_a_store(self) -> Settings:
        if self.result_store == "s3" and not self.object_store:
            raise ValueError("result_store s3 needs object_store (DDPM_OBJECT_STORE=s3://...)")
        return self

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, v: str | None) -> str | None:
        if v is not None:
            parse_sentinels(v)  # refuses a malformed list, naming the setting
        return v

    @field_validator("redis_replicated_ack", mode="before")
    @classmethod
    def _ack_unset(cls, v: object) -> object:
        return None if v == "" else v

    @property
    def sentinel_nodes(self) -> list[tuple[str, int]]:
        """The Sentinel nodes, in order; empty without Sentinel."""
        return parse_sentinels(self.redis_sentinels) if self.redis_sentinels else []

    @property
    def replicated_ack(self) -> bool:
        """Whether job creation and finish wait for a replica (explicit, else with Sentinel)."""
        if self.redis_replicated_ack is None:
            return bool(self.redis_sentinels)
        return self.redis_replicated_ack

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return v if v.endswith(":") else v + ":"

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def broker_url(self) -> str:
        """The Redis URL to use: the configured one, else the embedded server's, if running;
        with ``redis_password`` filled in when the URL has no password of its own. With
        Sentinel, kombu's form: ``sentinel://:pw@host:port/0;sentinel://...`` (redis-py
        clients are made by :func:`app.core.store.connect`, never from this URL)."""
        if self.redis_sentinels:
            auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
            return ";".join(f"sentinel://{auth}{_netloc(h, p)}/0" for h, p in self.sentinel_nodes)
        if self.redis_url:
            return with_password(self.redis_url, self.redis_password)
        f = redis_url_file(self.data_dir)
        if not f.exists():
            return with_password("redis://127.0.0.1:6379/0", self.redis_password)
        # The embedded Redis of `ddpm serve`: its password lives beside it (0600).
        password = self.redis_password
        secret = Path(self.data_dir) / "redis_password"
        if password is None and secret.exists():
            password = secret.read_text().strip()
        return with_password(f.read_text().strip(), password)


def parse_sentinels(value: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` (an IPv6 host in brackets) as (host, port) pairs; a
    ValueError naming ``DDPM_REDIS_SENTINELS`` for anything else."""
    nodes: list[tuple[str, int]] = []
    for raw in value.split(","):
        item = raw.strip()
        host, sep, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        ok = bool(sep and host and port.isdigit() and 0 < int(port) < 65536)
        if not ok or any(c in host for c in "/@ ;[]") or ("," in host):
            raise ValueError(
                f"DDPM_REDIS_SENTINELS: {item!r} is not host:port (expected e.g. "
                "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379)"
            )
        nodes.append((host, int(port)))
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"DDPM_REDIS_SENTINELS: a node is listed twice in {value!r}")
    return nodes


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def settings_error(exc: BaseException) -> str | None:
    """A one-line message for invalid ``DDPM_*`` settings (a pydantic ValidationError of
    :class:`Settings`), each naming its variable; None for any other exception."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError) or exc.title != Settings.__name__:
        return None
    parts = []
    for err in exc.errors():
        name = "DDPM_" + "_".join(str(p) for p in err.get("loc", ())).upper()
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        parts.append(msg if msg.startswith(name) else f"{name}: {msg}")
    return "invalid settings: " + "; ".join(parts)


def with_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` as its Redis password, unless it already has one."""
    if not password:
        return url
    parts = urlsplit(url)
    if parts.password or "@" in parts.netloc:
        return url
    netloc = f":{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def redis_url_file(data_dir: Path) -> Path:
    """Where ``ddpm serve`` records the URL of its embedded Redis."""
    return Path(data_dir) / "redis" / "url"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
