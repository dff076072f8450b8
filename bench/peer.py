"""Our service against LitServe + diffusers, side by side on the same weights, in one run.

What a user choosing a server would compare: ``ddpm serve`` (embedded Redis, API, gen
worker) against about 30 lines of LitServe wrapping diffusers' pipelines
(bench/peer_litserve.py: dynamic batching, ``--peer-max-batch 32``, ``--peer-batch-timeout
0.05``, each batch split by (sampler, steps), one pipeline call per group, a PNG per
request). ``--servers ours,peer,peer-bf16`` adds the peer under bf16 autocast (its
``--bf16``: the one line a user who knows the CPU has bf16 would add). This prints
figures; it asserts nothing.

    .venv/bin/python bench/peer.py --quick                      # a dry run, a few minutes
    .venv/bin/python bench/peer.py --json /tmp/peer.json        # the full run
    .venv/bin/python bench/peer.py --workloads same,lone --rounds 2

One run:
1. makes the weights: a random diffusers ``UNet2DModel`` shaped like our ``small`` preset at
   32x32x3 (6.5 M parameters), saved as a diffusers ``DDPMPipeline`` directory (unet/ and
   scheduler/), converted with ``ddpm convert`` and published into a fresh data dir's
   registry (DATA_DIR/checkpoints/peer/1/): both servers serve the same weights;
2. for each server in turn (never both at once: an idle server's threads would take CPU
   from the measured one): starts it as a separate process tree limited to ``--threads``
   torch threads (ours: ``ddpm serve --no-train-worker`` with DDPM_TORCH_THREADS; the
   peer: ``torch.set_num_threads``; OMP_NUM_THREADS for both), warms it up (not counted:
   one image per sampler, then ``--clients`` concurrent 2-step images), runs every
   workload, stops it;
3. drives both with the same load generator, async httpx clients that each submit one
   image and hold its PNG. Ours: ``POST /generate`` with ``Prefer: wait=60`` (then
   ``GET /jobs/{id}?wait=60`` while unfinished), then GET the image. The peer: ``POST
   /predict``, whose answer is the PNG.

Workloads (``--clients`` N, 64 by default):
  same            N concurrent clients, all DDIM ``--steps`` (20)
  mixed-steps     N concurrent clients, DDIM with steps alternating ``--mixed-steps`` (10/40)
  mixed-samplers  N concurrent clients, ``--samplers`` ddim, ddpm, dpm++2m in turn, 20 steps
                  (the peer splits its batches by scheduler)
  lone            one client, ``--lone`` jobs one after another (latency)
  burst           N requests arriving evenly over ``--burst-seconds`` (3 s), open loop

Per workload and server: images/s (images / first submit to last PNG held), p50 and p99
latency (each request's submit to its PNG held), errors, and the ratio ours/peer (img/s:
above 1 is ours faster; latency: below 1 is ours faster). Also the CPU of the servers'
process trees and of everything else on the machine during the workload (the machine may
be shared: "others" is CPU no process of this benchmark used), the load average, and for
ours the engine's batch sizes (from the job documents). ``--json FILE`` writes it all.
``--quick``: 8 clients, 2 lone jobs, a 1 s burst.

Not measured: classifier-free guidance. diffusers' DDIMPipeline / DDPMPipeline take no
class labels nor guidance scale, and a class-conditional ``UNet2DModel`` has no null class
(our converter appends a zero row for it), so the peer would be a sampling loop written for
this benchmark, not the pipeline its users call: the figure would measure that loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHECKPOINT = "peer"  # the registry name both servers' weights are published under
WORKLOADS = ("same", "mixed-steps", "mixed-samplers", "lone", "burst")
TERMINAL = ("succeeded", "failed", "canceled")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Req:
    """One image: what a client asks for, and when it arrives (s after the workload's start)."""

    sampler: str
    steps: int
    seed: int
    at: float = 0.0


@dataclass
class Result:
    """One workload on one server."""

    workload: str
    server: str
    round: int
    images: int
    errors: int
    seconds: float
    img_s: float
    p50_s: float
    p99_s: float
    mean_s: float
    cpu: dict[str, float] = field(default_factory=dict)  # share of all cores, by whom
    load_avg: float = 0.0  # 1-min load average at the start
    batches: str | None = None  # ours: the engine's batch sizes
    error_samples: list[str] = field(default_factory=list)


def pct(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (0.0 for no values)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddpm() -> list[str]:
    exe = Path(sys.executable).with_name("ddpm")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "app.cli"]


def make_weights(work: Path, seed: int) -> tuple[Path, Path, int]:
    """A random diffusers DDPMPipeline dir (``small`` at 32x32x3), converted with ``ddpm
    convert`` and published in a fresh data dir. Returns (model dir, data dir, parameters)."""
    import diffusers
    import torch

    from app.core.checkpoints.registry import Registry
    from ddpm_core.convert import diffusers_config
    from ddpm_core.unet import preset

    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**diffusers_config(preset("small", image_size=32, dropout=0.0)))
    model_dir, converted, data = work / "diffusers", work / "converted", work / "data"
    # The scheduler config travels with the weights: `ddpm convert` takes the schedule from it.
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    pipe.save_pretrained(model_dir)
    subprocess.run([*_ddpm(), "convert", str(model_dir), str(converted)], check=True, cwd=ROOT)
    data.mkdir()
    published = Registry(data).publish(converted, CHECKPOINT)
    print(f"# weights: {model_dir} -> `ddpm convert` -> {CHECKPOINT}@{published.version} "
          f"({published.path})")  # fmt: skip
    return model_dir, data, sum(p.numel() for p in unet.parameters())


class Server:
    """One server's process tree: started in its own session, stopped by its group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready: str, log: Path):
        self.name, self.argv, self.env, self.ready_path, self.log_path = name, argv, env, ready, log
        self.port = int(argv[argv.index("--port") + 1])
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait until ready; returns the seconds it took."""
        t0 = time.perf_counter()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.base + self.ready_path, timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s: {self.tail()}")

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        """SIGTERM to its process group (``ddpm serve`` stops its own children), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        # LitServe's workers share the group; if the leader went first, they remain.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def processes(self) -> list:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)  # type: ignore[union-attr]
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []


class CpuMeter:
    """CPU seconds over a span: the server's tree, this process (the clients), the machine."""

    def __init__(self, server: Server) -> None:
        import psutil

        self.psutil, self.procs, self.me = psutil, server.processes(), psutil.Process()
        self.before = self._read()

    def _read(self) -> tuple[float, float, float]:
        server = 0.0
        for p in self.procs:
            with contextlib.suppress(self.psutil.Error):
                t = p.cpu_times()
                server += t.user + t.system + t.children_user + t.children_system
        me = self.me.cpu_times()
        m = self.psutil.cpu_times()
        busy = m.user + m.nice + m.system + m.irq + m.softirq + getattr(m, "steal", 0.0)
        return server, me.user + me.system, busy

    def shares(self, seconds: float) -> dict[str, float]:
        """Each one's share of all the machine's cores during the span."""
        after = self._read()
        server, clients, busy = (a - b for a, b in zip(after, self.before, strict=True))
        total = seconds * (os.cpu_count() or 1)
        return {
            "server": server / total,
            "clients": clients / total,
            "others": max(0.0, busy - server - clients) / total,
        }


# -- the two servers' client sides ----------------------------------------------------------
async def ours_one(http: httpx.AsyncClient, req: Req) -> tuple[bytes, dict]:
    """Submit one image, wait for it (Prefer: wait, then long polls), fetch its PNG."""
    body = {"checkpoint": CHECKPOINT, "count": 1, "seed": req.seed, "steps": req.steps,
            "sampler": req.sampler}  # fmt: skip
    r = await http.post("/generate", json=body, headers={"Prefer": "wait=60"})
    r.raise_for_status()
    doc = r.json()
    while doc["status"] not in TERMINAL:
        r = await http.get(f"/jobs/{doc['id']}", params={"wait": 60})
        r.raise_for_status()
        doc = r.json()
    if doc["status"] != "succeeded":
        raise RuntimeError(f"job {doc['status']}: {doc.get('error')}")
    r = await http.get(doc["result"]["images"][0]["url"])
    r.raise_for_status()
    return r.content, doc


async def peer_one(http: httpx.AsyncClient, req: Req) -> tuple[bytes, dict]:
    r = await http.post("/predict", json={"seed": req.seed, "steps": req.steps,
                                          "sampler": req.sampler})  # fmt: skip
    r.raise_for_status()
    return r.content, {}


Submit = Callable[[httpx.AsyncClient, Req], Awaitable[tuple[bytes, dict]]]


def workload_requests(name: str, args: argparse.Namespace, seed0: int) -> list[Req]:
    """The requests of a workload (the same seeds for both servers)."""
    n, steps = args.clients, args.steps
    samplers = args.samplers.split(",")
    if name == "same":
        return [Req("ddim", steps, seed0 + i) for i in range(n)]
    if name == "mixed-steps":
        mixed = [int(s) for s in args.mixed_steps.split(",")]
        return [Req("ddim", mixed[i % len(mixed)], seed0 + i) for i in range(n)]
    if name == "mixed-samplers":
        return [Req(samplers[i % len(samplers)], steps, seed0 + i) for i in range(n)]
    if name == "lone":
        return [Req("ddim", steps, seed0 + i) for i in range(args.lone)]
    if name == "burst":
        return [Req("ddim", steps, seed0 + i, at=i * args.burst_seconds / n) for i in range(n)]
    raise ValueError(name)


async def run_workload(
    server: Server, submit: Submit, name: str, reqs: list[Req], rnd: int
) -> Result:
    """Send ``reqs`` (concurrently at their arrival times; one after another for ``lone``)."""
    latencies: list[float] = []
    errors: list[str] = []
    docs: list[dict] = []
    starts: list[float] = []
    ends: list[float] = []
    limits = httpx.Limits(max_connections=len(reqs) + 4, max_keepalive_connections=len(reqs) + 4)

    async def one(http: httpx.AsyncClient, req: Req, t0: float) -> None:
        await asyncio.sleep(max(0.0, t0 + req.at - time.perf_counter()))
        start = time.perf_counter()
        starts.append(start)
        try:
            png, doc = await submit(http, req)
            if not png.startswith(PNG_MAGIC):
                raise ValueError(f"not a PNG: {png[:40]!r}")
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")
            return
        end = time.perf_counter()
        ends.append(end)
        latencies.append(end - start)
        if doc:
            docs.append(doc)

    load = os.getloadavg()[0]
    meter = CpuMeter(server)
    async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=300) as http:
        t0 = time.perf_counter()
        if name == "lone":
            for req in reqs:
                await one(http, req, time.perf_counter())
        else:
            await asyncio.gather(*(one(http, req, t0) for req in reqs))
    wall = (max(ends) - min(starts)) if ends else 0.0
    cpu = meter.shares(max(1e-9, time.perf_counter() - t0))
    batches = None
    if docs:
        means = [d["metrics"].get("mean_batch_size") or 0.0 for d in docs]
        maxes = [d["metrics"].get("max_batch_size") or 0 for d in docs]
        batches = (
            f"engine batch: mean of jobs' means {statistics.mean(means):.1f}, max {max(maxes)}"
        )
    return Result(
        workload=name, server=server.name, round=rnd, images=len(latencies), errors=len(errors),
        seconds=wall, img_s=len(latencies) / wall if wall else 0.0, p50_s=pct(latencies, 0.5),
        p99_s=pct(latencies, 0.99), mean_s=statistics.mean(latencies) if latencies else 0.0,
        cpu=cpu, load_avg=load, batches=batches, error_samples=sorted(set(errors))[:3],
    )  # fmt: skip


async def warm_up(server: Server, submit: Submit, args: argparse.Namespace) -> float:
    """Not counted: one image per sampler (model load), then as many concurrent clients as
    the workloads have, at 2 steps, so that the first calls at the workloads' batch sizes
    (oneDNN primitives, allocations) are paid here."""
    t0 = time.perf_counter()
    samplers = args.samplers.split(",")
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=server.base, timeout=300, limits=limits) as http:
        for i, s in enumerate(samplers):
            await submit(http, Req(s, args.steps, 10**6 + i))
        await asyncio.gather(
            *(submit(http, Req(samplers[i % len(samplers)], 2, 10**6 + 10 + i))
              for i in range(args.clients))
        )  # fmt: skip
    return time.perf_counter() - t0


def make_servers(
    args: argparse.Namespace, model_dir: Path, data: Path, work: Path
) -> dict[str, Server]:
    threads = str(args.threads)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
    base_env |= {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    ours_env = base_env | {
        "DDPM_DATA_DIR": str(data),
        "DDPM_DEFAULT_CHECKPOINT": CHECKPOINT,
        "DDPM_TORCH_THREADS": threads,
        # Every client is anonymous, so one "client" to the per-client cap: let N through.
        "DDPM_MAX_JOBS_PER_CLIENT": str(max(64, args.clients)),
    }
    for kv in args.ours_env:
        key, _, value = kv.partition("=")
        ours_env[key] = value
    ours = Server(
        "ours",
        [*_ddpm(), "serve", "--no-train-worker", "--host", "127.0.0.1", "--port",
         str(_free_port())],
        ours_env, "/readyz", work / "ours.log",
    )  # fmt: skip

    def peer(name: str, *extra: str) -> Server:
        return Server(
            name,
            [sys.executable, str(ROOT / "bench" / "peer_litserve.py"), str(model_dir),
             "--port", str(_free_port()), "--threads", threads,
             "--max-batch-size", str(args.peer_max_batch),
             "--batch-timeout", str(args.peer_batch_timeout), *extra],
            base_env, "/health", work / f"{name}.log",
        )  # fmt: skip

    return {"ours": ours, "peer": peer("peer"), "peer-bf16": peer("peer-bf16", "--bf16")}


def print_results(results: list[Result]) -> list[dict]:
    """The table of every run, then the ratios ours/peer per workload (medians over rounds)."""
    print("\n| workload | server | round | images | errors | img/s | p50 s | p99 s | mean s "
          "| CPU server / clients / others | load avg | notes |")  # fmt: skip
    print("|---" * 12 + "|")
    for r in results:
        cpu = " / ".join(f"{r.cpu.get(k, 0):.0%}" for k in ("server", "clients", "others"))
        notes = "; ".join(filter(None, [r.batches, *r.error_samples]))
        print(f"| {r.workload} | {r.server} | {r.round} | {r.images} | {r.errors} | "
              f"{r.img_s:.2f} | {r.p50_s:.2f} | {r.p99_s:.2f} | {r.mean_s:.2f} | {cpu} | "
              f"{r.load_avg:.2f} | {notes} |")  # fmt: skip
    ratios = []
    print("\n| workload | img/s ours | img/s peer | img/s ours/peer | p50 ours/peer "
          "| p99 ours/peer |")  # fmt: skip
    print("|---" * 6 + "|")
    for w in dict.fromkeys(r.workload for r in results):
        med = {}
        for s in ("ours", "peer", "peer-bf16"):
            runs = [r for r in results if r.workload == w and r.server == s and r.images]
            if runs:
                med[s] = {k: statistics.median(getattr(r, k) for r in runs)
                          for k in ("img_s", "p50_s", "p99_s")}  # fmt: skip
        for peer in ("peer", "peer-bf16"):
            if "ours" not in med or peer not in med:
                continue
            o, p = med["ours"], med[peer]
            ratio = {k: o[k] / p[k] if p[k] else float("nan") for k in o}
            ratios.append({"workload": w, "peer_server": peer, "ours": o, "peer": p,
                           "ours_over_peer": ratio})  # fmt: skip
            print(f"| {w}{'' if peer == 'peer' else ' (vs peer-bf16)'} | {o['img_s']:.2f} | "
                  f"{p['img_s']:.2f} | {ratio['img_s']:.2f}x | {ratio['p50_s']:.2f}x | "
                  f"{ratio['p99_s']:.2f}x |")  # fmt: skip
    print("(img/s: above 1x is ours faster; latency: below 1x is ours faster)")
    return ratios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 clients, 2 lone jobs, 1 s burst")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    ap.add_argument("--servers", default="ours,peer",
                    help="which, in this order (round 1): ours, peer, peer-bf16 (the peer "
                    "under bf16 autocast)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=1, help="repeats; the order alternates")
    ap.add_argument("--clients", type=int, default=None, help="concurrent clients (64)")
    ap.add_argument("--lone", type=int, default=None, help="jobs of the lone client (10)")
    ap.add_argument("--burst-seconds", type=float, default=None, help="burst spread (3 s)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mixed-steps", default="10,40")
    ap.add_argument("--samplers", default="ddim,ddpm,dpm++2m")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    ap.add_argument("--peer-max-batch", type=int, default=32)
    ap.add_argument("--peer-batch-timeout", type=float, default=0.05)
    ap.add_argument("--ours-env", action="append", default=[], metavar="DDPM_X=V",
                    help="extra settings of our service (repeatable)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="the weights' seed")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (weights, logs)")
    args = ap.parse_args(argv)
    args.clients = args.clients or (8 if args.quick else 64)
    args.lone = args.lone or (2 if args.quick else 10)
    args.burst_seconds = args.burst_seconds or (1.0 if args.quick else 3.0)
    workloads = [w for w in args.workloads.split(",") if w]
    servers = [s for s in args.servers.split(",") if s]
    for bad in sorted(set(workloads) - set(WORKLOADS)) + sorted(
        set(servers) - {"ours", "peer", "peer-bf16"}
    ):
        ap.error(f"unknown workload or server {bad!r}")
    # A time limit's SIGTERM must still stop the servers in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import diffusers
    import litserve
    import torch

    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    work = Path(tempfile.mkdtemp(prefix="ddpm-peer-"))
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "litserve": getattr(litserve, "__version__", "?"),
        "python": platform.python_version(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "load_avg_start": os.getloadavg(),
    }
    print(f"# {meta['date']} {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}, "
          f"diffusers {meta['diffusers']}, litserve {meta['litserve']}; {args.threads} torch "
          f"threads each; {args.clients} clients; load avg {meta['load_avg_start'][0]:.2f}; "
          f"work dir {work}")  # fmt: skip
    model_dir, data, params = make_weights(work, args.seed)
    meta["parameters"] = params
    print(f"# small preset 3x32x32, {params:,} parameters (random weights)")
    table = make_servers(args, model_dir, data, work)
    submit: dict[str, Submit] = {"ours": ours_one, "peer": peer_one, "peer-bf16": peer_one}
    results: list[Result] = []
    try:
        for rnd in range(1, args.rounds + 1):
            order = servers if rnd % 2 else servers[::-1]
            for name in order:
                server = table[name]
                started = server.start()
                warm = run(warm_up(server, submit[name], args))
                print(f"# round {rnd}, {name}: ready in {started:.1f} s, warm-up {warm:.1f} s",
                      flush=True)  # fmt: skip
                meta[f"{name}_start_s_round{rnd}"] = round(started, 2)
                try:
                    for i, w in enumerate(workloads):
                        reqs = workload_requests(w, args, seed0=1000 * (i + 1))
                        r = run(run_workload(server, submit[name], w, reqs, rnd))
                        results.append(r)
                        print(f"#   {w}: {r.images} images, {r.errors} errors, {r.img_s:.2f} "
                              f"img/s, p50 {r.p50_s:.2f} s, p99 {r.p99_s:.2f} s, CPU others "
                              f"{r.cpu['others']:.0%}", flush=True)  # fmt: skip
                finally:
                    server.stop()
    finally:
        for server in table.values():
            server.stop()
    meta["load_avg_end"] = os.getloadavg()
    ratios = print_results(results)
    print(f"# load avg at the end {meta['load_avg_end'][0]:.2f}")
    if args.json:
        doc = {"meta": meta, "results": [asdict(r) for r in results], "ratios": ratios}
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"# wrote {args.json}")
    if args.keep:
        print(f"# kept {work} (logs: ours.log, peer.log)")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
