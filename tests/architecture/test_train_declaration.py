"""Every training option is declared once, in ddpm_core.config.train.TrainConfig, and the
request model (TrainOptions, POST /train) and the ``ddpm train`` flags follow from it: an
option added in one place only, or a worker-owned one leaking into the API, fails here."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from app.cli import train as train_cli
from app.core.jobs.spec import TrainOptions
from ddpm_core.config.options import Flag, Limits, check_options, declared_options, option
from ddpm_core.config.train import TrainConfig

pytestmark = pytest.mark.timeout(60)

# Whoever runs the training owns these: where it writes, what it resumes, its device.
WORKER_OWNED = {"out", "resume_from", "device"}
DECLARED = declared_options(TrainConfig)


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    train_cli.add_commands(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_field_declares_an_option() -> None:
    assert [d.name for d in DECLARED] == [f.name for f in dataclasses.fields(TrainConfig)]


def test_a_field_without_an_option_is_refused() -> None:
    @dataclasses.dataclass
    class Half:
        declared: int = option(1, cli=Flag(("--declared",)))
        forgotten: int = 2

    with pytest.raises(TypeError, match="Half.forgotten has no Option"):
        declared_options(Half)
    with pytest.raises(TypeError):  # the CLI's side must be said: a flag, or cli=None
        option(1)  # type: ignore[call-arg]


def test_request_model_is_the_request_settable_fields_in_order() -> None:
    owned = {d.name for d in DECLARED if not d.option.request}
    assert owned == WORKER_OWNED
    assert list(TrainOptions.model_fields) == [d.name for d in DECLARED if d.option.request]
    assert not WORKER_OWNED & set(TrainOptions.model_fields)
    assert "TrainConfig" in (TrainOptions.__doc__ or "")


def test_request_defaults_and_descriptions_are_the_declared_ones() -> None:
    defaults = TrainOptions().model_dump(mode="json")
    config = TrainConfig().to_dict()
    for d in DECLARED:
        if d.option.request:
            assert defaults[d.name] == config[d.name], d.name
            assert TrainOptions.model_fields[d.name].description == d.option.description


def _within(
    bound: float | None,
    is_open: bool,
    lib_closed: float | None,
    lib_open: float | None,
    below: bool,
) -> bool:
    """Whether a request bound (``is_open``: strict) is at least as tight as the library's
    (closed or open) on one side; ``below``: the lower side."""
    if lib_closed is None and lib_open is None:
        return True
    if bound is None:
        return False
    tighter = (lambda a, b: a > b) if below else (lambda a, b: a < b)
    if lib_open is not None:
        return tighter(bound, lib_open) or (is_open and bound == lib_open)
    return bound == lib_closed or tighter(bound, lib_closed)


def _stricter(request: Limits, library: Limits) -> bool:
    """Whether every number the request admits the library admits too."""
    lo = request.gt if request.gt is not None else request.ge
    hi = request.lt if request.lt is not None else request.le
    return _within(lo, request.gt is not None, library.ge, library.gt, below=True) and _within(
        hi, request.lt is not None, library.le, library.lt, below=False
    )


def test_request_bounds_are_within_the_library_bounds() -> None:
    for d in DECLARED:
        assert _stricter(d.option.api_limits, d.option.limits), d.name


def test_flags_are_the_declared_ones() -> None:
    parser = _train_parser()
    by_dest = {a.dest: a for a in parser._actions}
    flagged = [d for d in DECLARED if d.option.cli is not None]
    for d in flagged:
        action = by_dest[d.name]
        assert tuple(action.option_strings) == d.option.cli.names, d.name
        assert action.help == d.option.cli.help, d.name
    cli_less = {d.name for d in DECLARED if d.option.cli is None}
    assert not cli_less & set(by_dest)
    assert set(train_cli.HELP_ORDER) <= {d.name for d in flagged}
    assert len(set(train_cli.HELP_ORDER)) == len(train_cli.HELP_ORDER)
    custom = {d.name for d in flagged if d.option.cli.custom}
    assert custom == set(train_cli.CUSTOM_FLAGS)


def _other_value(d) -> tuple[list[str], Any]:
    """A flag's command-line words that set field ``d`` to something not its default, and
    the value TrainConfig should then hold."""
    flag, default = d.option.cli, d.default
    name = flag.names[-1]  # the last alias, so that aliases are exercised too
    if d.type is bool:
        return [name], not default
    if isinstance(flag.choices, Mapping):
        word = next(k for k, v in flag.choices.items() if v != default and k != v)
        return [name, word], flag.choices[word]
    if d.option.choices is not None:
        value = next(c for c in d.option.choices if c != default)
        return [name, str(value)], value
    if d.type is int:
        return [name, str(default + 1)], default + 1
    if d.type is float:
        return [name, str(default / 2 or 0.5)], default / 2 or 0.5
    raise AssertionError(f"no test value for {d.name}")


def test_every_flag_sets_its_field(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    words = ["train", "--out", str(tmp_path / "run"), "--dataset", str(folder)]
    words += ["--device", "cpu", "--unet", "base_channels=16", "--grad-clip", "0"]
    expected: dict[str, Any] = {"dataset": str(folder), "device": "cpu", "grad_clip": None}
    expected["unet_overrides"] = {"base_channels": 16}
    own = {"out", "resume_from", *expected}
    for d in DECLARED:
        if d.option.cli is not None and d.name not in own:
            more, expected[d.name] = _other_value(d)
            words += more
    parser = argparse.ArgumentParser()
    train_cli.add_commands(parser.add_subparsers())
    cfg = train_cli._train_config(parser.parse_args(words))
    got = {k: getattr(cfg, k) for k in expected}
    assert got == expected
    assert cfg.out == str(tmp_path / "run") and cfg.resume_from is None
    assert cfg.prediction_type == "v_prediction" and cfg.class_cond  # --prediction v, alias


def test_config_checks_follow_the_declarations() -> None:
    assert check_options(TrainConfig()) == []
    cfg = TrainConfig()
    cfg.channels, cfg.lr, cfg.compile, cfg.adam_betas = 2, 0.0, 1, (0.9, float("nan"))
    assert check_options(cfg) == [
        "channels must be 1 or 3, not 2",
        "lr must be > 0",
        "adam_betas must be two numbers in [0, 1)",
        "compile must be true or false, got 1",
    ]
    with pytest.raises(ValueError, match="invalid TrainConfig: default_steps must be in"):
        TrainConfig(timesteps=10, default_steps=11)
