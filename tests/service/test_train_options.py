"""POST /train options: validated by the API (which has no torch) exactly as TrainConfig."""

import dataclasses

import pytest

from app.core.jobs.spec import TrainOptions
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


def test_sampler_names_agree_everywhere() -> None:
    """The API, the worker's re-validation, the CLIs and the checkpoint config accept the
    same samplers (the API keeps its own Literal: it does not import the library's torch)."""
    import argparse
    import typing

    from app.cli.remote import add_commands as remote_commands
    from app.core.jobs.spec import GenerateJob, GenerateRequest
    from ddpm_core.config.names import SAMPLERS

    def literal(annotation) -> set[str]:
        args = set()
        for arg in typing.get_args(annotation):
            args |= literal(arg) if typing.get_args(arg) else {arg}
        return {a for a in args if isinstance(a, str)}

    assert literal(GenerateRequest.model_fields["sampler"].annotation) == set(SAMPLERS)
    assert literal(GenerateJob.model_fields["sampler"].annotation) == set(SAMPLERS)
    assert literal(TrainOptions.model_fields["default_sampler"].annotation) == set(SAMPLERS)

    def sampler_choices(parser: argparse.ArgumentParser) -> list[set[str]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += sampler_choices(sub)
            elif action.dest == "sampler":
                found.append(set(action.choices))
        return found

    from app.cli.offline import add_commands as core_commands
    from app.cli.train import add_commands as train_commands

    for add in (remote_commands, core_commands, train_commands):
        parser = argparse.ArgumentParser()
        add(parser.add_subparsers())
        choices = sampler_choices(parser)
        assert choices and all(c == set(SAMPLERS) for c in choices), add.__module__
