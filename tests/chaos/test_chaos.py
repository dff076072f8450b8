"""No accepted job is lost: 30 generate jobs and a training run through killed workers and
a killed Redis, with the shipped settings (lease, visibility timeout, AOF fsync)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from scenario import Cluster, run_scenario  # noqa: E402
from svc_helpers import decode_png, to_uint8  # noqa: E402


def _library_images(request: dict, precision: str) -> np.ndarray:
    """What `ddpm sample` makes for the job's normalised request, in the precision the
    worker ran (``metrics.precision``: each worker chooses it by timing the network)."""
    import torch

    from ddpm_core.builtin import builtin_path
    from ddpm_core.checkpoint import load_checkpoint
    from ddpm_core.pipeline import generate

    torch.set_num_threads(1)
    ckpt = load_checkpoint(builtin_path("digits"))
    ckpt.model.to(memory_format=torch.channels_last)  # the engine's layout
    images = generate(
        ckpt,
        count=request["count"],
        seed=request["seed"],
        steps=request["steps"],
        sampler=request["sampler"],
        eta=request["eta"],
        labels=request["label"],
        guidance_scale=request["guidance_scale"],
        autocast_dtype={"fp32": None, "bf16": torch.bfloat16}[precision],
    )
    return to_uint8(images)


@pytest.mark.timeout(480)
def test_no_accepted_job_is_lost(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        report = run_scenario(cluster, n_jobs=30, gen_kills=2, redis_restarts=1)
        store = cluster.store()
        attempts = 0
        for job_id, body in report.jobs:
            doc = cluster.doc(job_id)
            assert doc["status"] == "succeeded", doc
            assert {k: doc["request"][k] for k in body} == body
            attempts += doc["attempts"]
            names = [e for e, _ in cluster.events(job_id)]
            assert names[-1] == "done" and names.count("done") == 1, (job_id, names)
            want = _library_images(doc["request"], doc["metrics"]["precision"])
            for img in doc["result"]["images"]:
                got = decode_png(cluster.client.get(img["url"]).content)
                assert np.abs(got.astype(int) - want[img["index"]].astype(int)).max() <= 1
        assert attempts > len(report.jobs)  # the faults did hit running jobs
        train = cluster.doc(report.train_id)
        assert train["status"] == "succeeded" and train["attempts"] >= 2, train
        assert train["result"]["checkpoint"] == "chaos@1"
        versions = cluster.client.get("/checkpoints/chaos").json()["versions"]
        assert [v["version"] for v in versions] == ["1"]  # published exactly once
        assert versions[0]["meta"]["training_steps"] == 320
        stats = store.stats()
        n = len(report.jobs)
        assert stats["jobs_submitted:generate"] == n
        assert stats["jobs_finished:generate:succeeded"] == n
        assert stats.get("jobs_finished:generate:failed", 0) == 0
        assert stats["jobs_finished:train:succeeded"] == 1
        assert store.queue_depth("generate") == 0 and not store.running("generate")
    finally:
        cluster.down()
