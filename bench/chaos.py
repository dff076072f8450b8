"""The chaos scenario of tests/chaos, scaled up and run by hand: prints recovery times.

Real processes with the shipped settings: redis-server (AOF, fsync every second), ``ddpm
api``, a gen and a train worker; gen workers SIGKILLed, Redis SIGKILLed and restarted, the
train worker SIGKILLed once. Then it checks that every job succeeded once and prints how
long recovery took. Prints, never asserts.

    .venv/bin/python bench/chaos.py [--jobs 50] [--gen-kills 3] [--redis-restarts 2]

``--campaign``: a seeded randomized fault campaign instead. For ``--duration`` seconds a
steady stream of generate jobs (``--rate`` per second) and ``--train-runs`` training runs,
while faults drawn at random every 15-30 s hit: gen worker SIGKILL, train worker SIGKILL,
API SIGKILL, and a Redis fault (with ``--sentinel``: the master SIGKILLed, a failover;
without: a SIGKILL and restart on the AOF). The schedule is printed first; afterwards the
accepted, succeeded-once, lost and duplicated jobs, every event stream's ``done``, and
the recovery time after each fault (p50/max by kind).

    .venv/bin/python bench/chaos.py --campaign --sentinel --duration 600 --seed 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "chaos"))

from scenario import (  # noqa: E402
    FAULT_KINDS,
    Cluster,
    SentinelCluster,
    run_campaign,
    run_scenario,
)


def campaign(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="ddpm-campaign-"))
    cluster = SentinelCluster(work) if args.sentinel else Cluster(work)
    kinds = tuple(k for k in FAULT_KINDS if k not in args.without)
    try:
        camp = run_campaign(
            cluster, args.duration, args.seed, args.rate, args.train_runs, kinds, args.steps
        )
        store = cluster.store()
        docs = {k: store.get(j) for k, j in camp.accepted.items()}  # None: lost
        done_once = sum(
            [e for e, _ in cluster.events(camp.accepted[k])].count("done") == 1
            for k, d in docs.items()
            if d is not None
        )
        stats = store.stats()
    finally:
        cluster.down()
    print(f"seed {args.seed}, {args.duration:.0f} s, sentinel={args.sentinel}, rate {args.rate}/s, "
          f"steps {args.steps}; schedule:")  # fmt: skip
    print("  " + ", ".join(f"{t:.0f}s {k}" for t, k in camp.schedule))
    lost = [k for k, d in docs.items() if d is None]
    gen = {k: d for k, d in docs.items() if k.startswith("gen-") and d is not None}
    ok = sum(d["status"] == "succeeded" for d in gen.values())
    recorded = stats.get("jobs_finished:generate:succeeded", 0)
    n_gen = sum(k.startswith("gen-") for k in camp.accepted)
    print(f"generate: accepted {n_gen}, succeeded {ok}, lost {len(lost)}, "
          f"recorded twice {recorded - ok:.0f}; submitted counter "
          f"{stats.get('jobs_submitted:generate', 0):.0f}; 503s/transport errors retried "
          f"{camp.refused}")  # fmt: skip
    others = {d["status"] for d in gen.values()} - {"succeeded"}
    print(f"other statuses: {sorted(others) or 'none'}; attempts "
          f"{sum(d['attempts'] for d in gen.values())}")  # fmt: skip
    train = [d for k, d in docs.items() if k.startswith("train-") and d is not None]
    print("train: " + ", ".join(f"{d['status']} after {d['attempts']} attempts" for d in train))
    print(f"event streams with exactly one done: {done_once} of {len(docs)}")
    by_kind: dict[str, list[tuple[float, int]]] = {}
    for _, kind, rec, hit in camp.injected:
        by_kind.setdefault(kind, []).append((rec, hit))
    for kind, rows in sorted(by_kind.items()):
        # Recovery over the faults that interrupted running jobs (the API's: every kill).
        hits = [r for r, n in rows if n or kind == "api_kill"]
        line = f"{kind}: {len(rows)} injected, {sum(n for _, n in rows)} running jobs hit"
        if hits:
            line += f"; recovery p50 {statistics.median(hits):.1f} s, max {max(hits):.1f} s"
        print(line)
    worst = max((r for _, k, r, n in camp.injected if n and k != "train_kill"), default=0.0)
    print(f"worst time for an interrupted generate job to run again: {worst:.1f} s")
    for at, kind, why in camp.skipped:
        print(f"skipped {kind} at {at:.0f} s: {why}")
    print(f"wall {camp.wall_s:.0f} s; logs in {work}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--gen-kills", type=int, default=3)
    ap.add_argument("--redis-restarts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--campaign", action="store_true", help="a seeded randomized campaign")
    ap.add_argument("--sentinel", action="store_true", help="Redis as a Sentinel group")
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--rate", type=float, default=0.5, help="generate jobs per second")
    ap.add_argument("--train-runs", type=int, default=2)
    ap.add_argument("--without", nargs="*", default=[], choices=FAULT_KINDS)
    ap.add_argument("--steps", nargs="+", type=int, default=[10, 20, 30], help="drawn per job")
    args = ap.parse_args()
    if args.campaign:
        campaign(args)
        return
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="ddpm-chaos-")))
    try:
        rep = run_scenario(cluster, args.jobs, args.gen_kills, args.redis_restarts, args.seed)
        docs = [cluster.doc(j) for j, _ in rep.jobs]
        train = cluster.doc(rep.train_id)
        stats = cluster.store().stats()
        versions = cluster.client.get("/checkpoints/chaos").json()["versions"]
    finally:
        cluster.down()
    by_status: dict[str, int] = {}
    for d in docs:
        by_status[d["status"]] = by_status.get(d["status"], 0) + 1
    print(f"jobs: {len(docs)} generate + 1 train, wall {rep.wall_s:.1f} s")
    print(f"generate outcomes: {by_status}; attempts total {sum(d['attempts'] for d in docs)}")
    print(f"train: {train['status']}, attempts {train['attempts']}, {train['result']}")
    print(f"published versions of 'chaos': {[v['version'] for v in versions]}")
    print(
        "counters: submitted {:.0f}, succeeded {:.0f}, failed {:.0f}, requeued {:.0f}".format(
            stats.get("jobs_submitted:generate", 0),
            stats.get("jobs_finished:generate:succeeded", 0),
            stats.get("jobs_finished:generate:failed", 0),
            stats.get("jobs_requeued:generate", 0),
        )
    )
    for name, values in rep.recoveries.items():
        if values:
            shown = ", ".join(f"{v:.1f}" for v in values)
            print(f"{name}: {shown} s (median {statistics.median(values):.1f})")


if __name__ == "__main__":
    main()
