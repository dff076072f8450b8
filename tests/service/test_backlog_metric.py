"""``ddpm_backlog_images``: the images of the queued and running jobs, per queue, read
from the store at scrape time (the autoscaler's signal, deploy/k8s)."""

from __future__ import annotations

from dataclasses import fields

from prometheus_client.parser import text_string_to_metric_families
from svc_helpers import store_for, submit

from ddpm_core.config.train import TrainConfig

ADMIN = {"Authorization": "Bearer admin-secret"}


def _backlog(client) -> dict[str, float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    (family,) = [
        f for f in text_string_to_metric_families(r.text) if f.name == "ddpm_backlog_images"
    ]
    assert family.type == "gauge"
    return {s.labels["queue"]: s.value for s in family.samples}


def test_backlog_counts_images_of_queued_and_running_jobs(isolated):
    s, c = isolated()  # no worker: jobs stay where the test puts them
    store = store_for(s)
    assert _backlog(c) == {"gen": 0, "train": 0}
    a, b, d = (submit(c, {"count": n, "seed": 1})["id"] for n in (3, 5, 7))
    assert _backlog(c) == {"gen": 15, "train": 0}
    claim = store.claim(a, "generate", "w")  # running: still work to do
    assert _backlog(c)["gen"] == 15
    store.finish(a, "generate", "succeeded", claim.attempt)
    assert _backlog(c)["gen"] == 12
    assert c.post(f"/jobs/{b}/cancel").status_code == 202
    assert _backlog(c) == {"gen": 7, "train": 0}
    # A training job's images: steps x batch size x accumulate, defaults for unset options.
    t = c.post(
        "/train", json={"name": "x", "options": {"steps": 3, "batch_size": 4}}, headers=ADMIN
    )
    assert t.status_code == 202, t.text
    assert _backlog(c) == {"gen": 7, "train": 3 * 4 * 1}
    u = c.post("/train", json={"name": "y"}, headers=ADMIN)
    assert u.status_code == 202, u.text
    default = {f.name: f.default for f in fields(TrainConfig)}
    assert (
        _backlog(c)["train"]
        == 12 + default["steps"] * default["batch_size"] * default["accumulate"]
    )
    store.claim(d, "generate", "w")
    store.cancel(d, "generate")  # a running job's cancel is a request: it still runs
    assert _backlog(c)["gen"] == 7
