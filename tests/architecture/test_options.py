"""Each generation option is declared once (app.core.jobs.spec.GENERATE_OPTIONS): the
surfaces that derive from the declaration are checked to, and those that cannot (the
httpx-only client, the web page, the API's normalisation) are checked against it, so an
option added in one place only fails here."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from app.core.jobs.spec import GENERATE_OPTIONS, GenerateJob, GenerateRequest
from app.core.jobs.webhook import WEBHOOK_FIELDS

ROOT = Path(__file__).resolve().parents[2]
NAMES = [o.name for o in GENERATE_OPTIONS]

pytestmark = pytest.mark.timeout(60)


def test_request_and_stored_models_have_every_option_in_order() -> None:
    # Then the job's own fields (the webhook), which are no generation options.
    assert list(GenerateRequest.model_fields) == [*NAMES, "deadline_seconds", *WEBHOOK_FIELDS]
    assert list(GenerateJob.model_fields) == NAMES


def test_the_engine_takes_every_option_but_the_checkpoint_and_the_file_format() -> None:
    from worker.generate.engine import GenSpec

    fields = [f.name for f in dataclasses.fields(GenSpec)]
    assert fields[:3] == ["job_id", "checkpoint_path", "checkpoint_ref"]
    not_engine = {"checkpoint", "output_format", "output_quality"}
    assert fields[3:] == [n for n in NAMES if n not in not_engine]


@pytest.mark.parametrize("which", ["Client", "AsyncClient"])
def test_both_clients_take_every_option_by_name(which: str) -> None:
    import app.client

    params = inspect.signature(getattr(app.client, which).generate).parameters
    job_fields = ("self", "idempotency_key", "deadline_seconds", *WEBHOOK_FIELDS)
    assert [p for p in params if p not in job_fields] == NAMES
    assert params["count"].default == 1
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in NAMES[1:])


def _dests(parser: argparse.ArgumentParser, *path: str) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and path and path[0] in action.choices:
            return _dests(action.choices[path[0]], *path[1:])
    return {a.dest for a in parser._actions}


def test_the_command_lines_have_every_option_they_can_take() -> None:
    from app.cli import build_parser

    parser = build_parser()
    assert set(NAMES) <= _dests(parser, "remote", "generate")
    local = {o.name for o in GENERATE_OPTIONS if o.flag and not o.flag.remote_only}
    # ddpm sample takes a checkpoint directory (positional) and makes no GIF.
    assert local | {"checkpoint"} <= _dests(parser, "sample")
    assert local == set(NAMES) - {"checkpoint", "trajectory_frames"}


def test_the_api_normalises_every_option(tmp_path: Path) -> None:
    from app.api.services.submit import normalise_generate
    from app.core.checkpoints import Registry
    from app.core.settings import Settings

    settings = Settings(data_dir=tmp_path)
    out = normalise_generate(GenerateRequest(), settings, Registry(tmp_path))
    assert set(NAMES) <= set(out)
    GenerateJob.model_validate(out)  # what the worker reads back passes its checks


def test_the_web_page_has_a_control_for_every_option() -> None:
    html = (ROOT / "app/api/ui/index.html").read_text()
    form = html[html.index('<form id="gen-form"') : html.index("</form>", html.index("gen-form"))]
    names = set(re.findall(r'name="([a-z_]+)"', form))
    assert set(NAMES) <= names
    js = (ROOT / "app/api/ui/generate.js").read_text()
    for n in NAMES:  # the page sends it (body.x = ..., or x: ... in the request body)
        assert re.search(rf"\b(body\.{n}\b|{n}:)", js), n
