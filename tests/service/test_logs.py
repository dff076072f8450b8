"""kv log lines cannot be forged: a value with a newline or control characters is escaped."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from app.core.logs import _Formatter, log_event

# One kv token: key=bare or key="JSON string".
TOKEN = re.compile(r'([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?: |$)')

NASTY = [
    "ok\nts=2026-01-01T00:00:00.000Z level=error msg=forged",
    "a\r\nlevel=critical",
    "bell\x07 esc\x1b[31mred",
    "line\u2028sep\u2029para\x85nel",
    'quote" key=value',
    "back\\slash",
    "",
    "tab\there",
]


def _log(fmt: str, msg: str, **fields) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(_Formatter(fmt))
    logger = logging.getLogger(f"ddpm.test.logs.{fmt}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    log_event(logger, msg, **fields)
    return out.getvalue()


@pytest.mark.parametrize("value", NASTY)
def test_kv_value_stays_on_one_line_and_round_trips(value: str) -> None:
    text = _log("kv", value, job_id=value, **{"bad\nkey=x": value})
    assert text.endswith("\n")
    line = text[:-1]
    assert len(text.splitlines()) == 1, text  # splitlines breaks on \r, \x85, \u2028 too
    assert all(c.isprintable() for c in line), repr(line)
    parsed = {}
    pos = 0
    while pos < len(line):
        m = TOKEN.match(line, pos)
        assert m, f"unparsable at {pos}: {line[pos:]!r}"
        raw = m.group(2)
        parsed[m.group(1)] = json.loads(raw) if raw.startswith('"') else raw
        pos = m.end()
    assert parsed["msg"] == value and parsed["job_id"] == value
    assert parsed["bad_key_x"] == value
    assert set(parsed) == {"ts", "level", "logger", "msg", "job_id", "bad_key_x"}


def test_plain_values_stay_bare() -> None:
    line = _log("kv", "job submitted", job_id="0b7c-1", kind="generate", n=3)
    assert 'msg="job submitted"' in line
    assert "job_id=0b7c-1 kind=generate n=3" in line


@pytest.mark.parametrize("value", NASTY)
def test_json_format_is_one_line(value: str) -> None:
    text = _log("json", value, job_id=value)
    assert len(text.splitlines()) == 1
    assert json.loads(text)["job_id"] == value
