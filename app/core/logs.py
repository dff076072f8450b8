"""Structured logs: one line per event, key=value (default) or JSON, naming the job id."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

__all__ = ["configure_logging", "log_event"]

_KEY_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_SEPARATOR = re.compile(r'[ ="\\]')
_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _fmt_value(v: Any) -> str:
    """A kv value: bare when it is plainly one token, else a JSON string. Newlines and other
    control or separator characters are escaped (``ensure_ascii``), so a value cannot end
    the line and forge another log entry."""
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    if not s or not s.isprintable() or _SEPARATOR.search(s):
        return json.dumps(s, ensure_ascii=True)
    return s


def _fmt_key(k: str) -> str:
    # Keys come from code, but ``**fields`` may carry any string: keep them one bare token.
    return _KEY_BAD.sub("_", k) or "_"


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.kind = fmt

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields |= {k: v for k, v in record.__dict__.items() if k not in _STD}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.kind == "json":
            return json.dumps(fields, default=str)
        return " ".join(f"{_fmt_key(k)}={_fmt_value(v)}" for k, v in fields.items())


def configure_logging(level: str = "INFO", fmt: str = "kv") -> None:
    """Send our loggers (``ddpm.*``) to stderr as structured lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    root = logging.getLogger("ddpm")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``msg`` with ``fields`` (e.g. job_id=...) as structured keys."""
    logger.log(level, msg, extra={(f"{k}_" if k in _STD else k): v for k, v in fields.items()})
