"""/metrics by checkpoint: generation's images, queue wait and run time labelled with the
busiest checkpoints' names, the rest folded into ``_other`` (a bounded label), from the
stats the workers' finish transitions write."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from svc_helpers import make_client, submit, wait_job

from app.core.stats import OTHER, by_checkpoint

pytestmark = pytest.mark.timeout(120)


def _samples(client) -> dict[tuple[str, str], float]:
    """(sample name, checkpoint label) -> value of the per-checkpoint families."""
    out = {}
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        if fam.name.startswith("ddpm_checkpoint_"):
            for s in fam.samples:
                if "le" not in s.labels:
                    out[(s.name, s.labels["checkpoint"])] = s.value
    return out


def test_the_busiest_checkpoint_is_labelled_and_the_rest_are_other(settings, worker):
    with make_client(settings.model_copy(update={"metrics_checkpoints": 1})) as client:
        # tiny is the session's busiest checkpoint by far; make sure of it.
        wait_job(client, submit(client, {"count": 8, "steps": 2})["id"])
        before = _samples(client)
        a = wait_job(client, submit(client, {"checkpoint": "tiny", "count": 3, "steps": 3})["id"])
        b = wait_job(client, submit(client, {"checkpoint": "tinycond", "steps": 3})["id"])
        assert a["status"] == b["status"] == "succeeded"
        after = _samples(client)
    assert {label for _, label in after} == {"tiny", OTHER}

    def delta(name: str, label: str) -> float:
        return after.get((name, label), 0.0) - before.get((name, label), 0.0)

    assert delta("ddpm_checkpoint_images_generated_total", "tiny") == 3
    assert delta("ddpm_checkpoint_images_generated_total", OTHER) == 1
    for hist in ("queue_seconds", "run_seconds"):
        assert delta(f"ddpm_checkpoint_{hist}_count", "tiny") == 1
        assert delta(f"ddpm_checkpoint_{hist}_count", OTHER) == 1
    run = delta("ddpm_checkpoint_run_seconds_sum", "tiny")
    m = a["metrics"]
    assert run == pytest.approx(m["wait_seconds"] + m["run_seconds"], abs=0.05)


def test_other_sums_every_checkpoint_past_the_top():
    stats = {
        "ckpt:a:images_generated": 5.0, "ckpt:b:images_generated": 9.0,
        "ckpt:c:images_generated": 1.0, "ckpt:c:run_seconds_sum": 2.0,
        "ckpt:a:run_seconds_sum": 3.0, "images_generated": 15.0,
    }  # fmt: skip
    got = by_checkpoint(stats, 1, "images_generated")
    assert list(got) == ["b", OTHER]
    assert got[OTHER] == {"images_generated": 6.0, "run_seconds_sum": 5.0}
    assert list(by_checkpoint(stats, 5, "images_generated")) == ["b", "a", "c"]
