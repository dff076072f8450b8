"""POST /train options: validated by the API (which has no torch) exactly as TrainConfig."""

import dataclasses

import pytest

from app.schemas import TrainOptions
from ddpm_core.train import TrainConfig

WORKER_OWNED = {"out", "resume_from", "device"}


def test_options_mirror_train_config() -> None:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(TrainOptions.model_fields) == set(fields) - WORKER_OWNED
    defaults = TrainOptions().model_dump()
    config = TrainConfig()
    for name in TrainOptions.model_fields:
        expected = getattr(config, name)
        got = defaults[name]
        assert (list(got) if isinstance(got, tuple) else got) == (
            list(expected) if isinstance(expected, tuple) else expected
        ), name


AUTH = {"Authorization": "Bearer admin-secret"}


@pytest.mark.parametrize(
    "options,field",
    [
        ({"stepz": 5}, "stepz"),
        ({"steps": 0}, "steps"),
        ({"precision": "fp8"}, "precision"),
        ({"dataset": "../etc"}, "dataset"),
        ({"dataset": "/abs/path"}, "dataset"),
        ({"dataset": "nosuchfolder"}, "dataset"),
        ({"out": "/tmp/x"}, "out"),
    ],
)
def test_bad_training_options_are_422(isolated, options: dict, field: str) -> None:
    _, client = isolated()
    with client:
        r = client.post("/train", json={"name": "m", "options": options}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_good_options_are_queued_with_only_what_was_set(isolated) -> None:
    _, client = isolated()
    with client:
        r = client.post("/train", json={"name": "m", "options": {"steps": 5}}, headers=AUTH)
    assert r.status_code == 202, r.text
    assert r.json()["request"]["options"] == {"steps": 5}
