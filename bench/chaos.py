"""The chaos scenario of tests/chaos, scaled up and run by hand: prints recovery times.

Real processes with the shipped settings: redis-server (AOF, fsync every second), ``ddpm
api``, a gen and a train worker; gen workers SIGKILLed, Redis SIGKILLed and restarted, the
train worker SIGKILLed once. Then it checks that every job succeeded once and prints how
long recovery took. Prints, never asserts.

    .venv/bin/python bench/chaos.py [--jobs 50] [--gen-kills 3] [--redis-restarts 2]
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

from scenario import Cluster, run_scenario  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--gen-kills", type=int, default=3)
    ap.add_argument("--redis-restarts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
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
