"""Acknowledged jobs survive two Redis master failovers (Sentinel, the shipped settings).

Real processes: master, replica and three sentinels (tests/service/sentinel_group.py:
compose's data-node flags, docker/sentinel.conf), ``ddpm api`` and ``ddpm worker --queue
gen`` finding the master through DDPM_REDIS_SENTINELS, with replicated acknowledgement on
(the default with Sentinel). The master is SIGKILLed twice: once during a burst of
submissions (after the burst's 4th 202), once while jobs finish (after the second
burst's first success); each time the killed node comes back once the sentinels have
promoted the other (a host that returns), and rejoins as a replica. Clients retry a 503
with the same Idempotency-Key. Every fault is scheduled on an observed event.

Checks: every job that got a 202 succeeds, its outcome recorded once (the counters),
one ``done`` per event stream, nothing left queued or running; prints the failover and
recovery times."""

from __future__ import annotations

import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenario import TERMINAL, SentinelCluster, generate_bodies  # noqa: E402


class Submitter:
    """Submits bodies from a few threads, each retrying 503s and transport errors with its
    own Idempotency-Key, as a client should; records when each 202 came back."""

    def __init__(self, c: SentinelCluster, timeout: float = 90) -> None:
        self.base = str(c.client.base_url)
        self.timeout = timeout
        self.lock = threading.Lock()
        self.accepted: dict[str, tuple[str, dict, float]] = {}  # key -> (id, body, time)
        self.refused_503 = 0
        self.changed = threading.Condition(self.lock)

    def _one(self, key: str, body: dict) -> None:
        deadline = time.monotonic() + self.timeout
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while time.monotonic() < deadline:
                try:
                    r = http.post("/generate", json=body, headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    time.sleep(0.2)
                    continue
                if r.status_code == 202:
                    with self.changed:
                        self.accepted[key] = (r.json()["id"], body, time.monotonic())
                        self.changed.notify_all()
                    return
                assert r.status_code == 503, r.text
                with self.lock:
                    self.refused_503 += 1
                time.sleep(0.2)
        raise TimeoutError(f"{key} never accepted")

    def start(self, pool: ThreadPoolExecutor, items: list[tuple[str, dict]]) -> list:
        return [pool.submit(self._one, k, b) for k, b in items]

    def wait_count(self, n: int, timeout: float = 60) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: len(self.accepted) >= n, timeout)
        assert ok, f"only {len(self.accepted)} of {n} accepted"

    def first_after(self, t: float) -> float | None:
        with self.lock:
            times = [at for _, _, at in self.accepted.values() if at > t]
        return min(times) - t if times else None


def _bodies(n: int, rng: random.Random, first_seed: int) -> list[dict]:
    bodies = generate_bodies(n, rng, max_count=2)
    for i, b in enumerate(bodies):
        b["steps"] = rng.choice([10, 20])  # a small CPU: many short jobs
        b["seed"] = first_seed + i
    return bodies


def _failover(c: SentinelCluster, what: str, report: dict, probe: str | None = None) -> float:
    """Kill the master, wait for the promotion (then read job ``probe`` through the API),
    bring the node back as a replica."""
    i, t_kill = c.kill_master()
    old = c.group.node_ports[i]
    report[f"{what}: failover (sentinels name the new master)"] = c.group.wait_failover(old)
    if probe is not None:
        c.doc(probe)  # retries until the API answers
        report[f"{what}: API answers reads again"] = time.monotonic() - t_kill
    c.group.start_node(i)  # the host returns: its old data is replaced by the new master's
    c.group.wait_replica_of_master()
    report[f"{what}: replica back in sync"] = time.monotonic() - t_kill
    return t_kill


@pytest.mark.timeout(300)
def test_acknowledged_jobs_survive_two_master_failovers(tmp_path) -> None:
    c = SentinelCluster(tmp_path)
    report: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        c.up()
        report["service up"] = time.monotonic() - t0
        rng = random.Random(24)
        first = [(f"burst1-{i}", b) for i, b in enumerate(_bodies(16, rng, 1000))]
        second = [(f"burst2-{i}", b) for i, b in enumerate(_bodies(10, rng, 2000))]
        sub = Submitter(c)
        with ThreadPoolExecutor(4) as pool:
            # 1. The master dies during a submission burst (after its 4th 202).
            futures = sub.start(pool, first)
            sub.wait_count(4)
            probe = next(iter(sub.accepted.values()))[0]
            t_kill = _failover(c, "kill 1 (submissions)", report, probe=probe)
            for f in futures:
                f.result()
            report["kill 1: first 202 after the kill"] = sub.first_after(t_kill) or -1.0

            # 2. The master dies while jobs finish: after the second burst's first success.
            futures = sub.start(pool, second)
            for f in futures:
                f.result()
            ids = [sub.accepted[k][0] for k, _ in second]
            deadline = time.monotonic() + 60
            while True:
                statuses = [c.doc(j)["status"] for j in ids]
                if "succeeded" in statuses:
                    break
                assert time.monotonic() < deadline, statuses
                time.sleep(0.1)
            unfinished = sum(s not in TERMINAL for s in statuses)
            t_kill = _failover(c, "kill 2 (finishes)", report, probe=ids[0])

        deadline = time.monotonic() + 120
        for job_id, _, _ in sub.accepted.values():
            while c.doc(job_id)["status"] not in TERMINAL:
                assert time.monotonic() < deadline, (c.doc(job_id), c.tail("gen")[-3000:])
                time.sleep(0.2)
        report["kill 2: every job finished"] = time.monotonic() - t_kill

        n = len(first) + len(second)
        assert len(sub.accepted) == n
        attempts = 0
        for job_id, body, _ in sub.accepted.values():
            doc = c.doc(job_id)
            assert doc["status"] == "succeeded", doc
            assert {k: doc["request"][k] for k in body} == body
            assert len(doc["result"]["images"]) == body["count"]
            attempts += doc["attempts"]
            names = [e for e, _ in c.events(job_id)]
            assert names[-1] == "done" and names.count("done") == 1, (job_id, names)
        store = c.store()
        stats = store.stats()
        assert stats["jobs_submitted:generate"] == n  # each accepted job created once
        assert stats["jobs_finished:generate:succeeded"] == n  # and recorded once
        assert stats.get("jobs_finished:generate:failed", 0) == 0
        assert store.queue_depth("generate") == 0 and not store.running("generate")
        for what in ("kill 1 (submissions)", "kill 2 (finishes)"):
            failover = report[f"{what}: failover (sentinels name the new master)"]
            assert report[f"{what}: API answers reads again"] < failover + 5, report
        report["wall"] = time.monotonic() - t0
        print(
            f"\nsentinel failover: {n} jobs accepted, {n} succeeded once, {attempts} attempts, "
            f"{sub.refused_503} 503s retried; {unfinished} of the second burst unfinished at "
            "kill 2"
        )
        for what, seconds in report.items():
            print(f"  {what}: {seconds:.1f} s")
    finally:
        c.down()
