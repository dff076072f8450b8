"""How a generation option is declared once and what is derived from the declaration.

Each :class:`GenerateOption` says everything every surface needs: the type, default and
bounds of a request (the HTTP API's schema, and so the web page's form), the type and
bounds once the API has normalised it (what the worker reads back from Redis and checks
again), its default in the engine (:data:`worker.generate.engine.GenSpec`), and how the
command lines spell it (``ddpm sample``, ``ddpm remote generate``). The declarations
themselves are in :mod:`app.core.jobs.spec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

__all__ = [
    "REQUIRED",
    "NOT_IN_ENGINE",
    "Flag",
    "Stored",
    "GenerateOption",
    "request_model",
    "stored_model",
    "engine_fields",
]

REQUIRED: Any = ...  # a stored field without a default: the API always fills it in
NOT_IN_ENGINE: Any = object()  # the engine does not take the option (it gets a path)


@dataclass(frozen=True)
class Flag:
    """An option on the command line. ``invert``: a switch that sets the option to False
    (``--raw`` for ``use_ema``); ``remote_only``: ``ddpm remote generate`` alone has it."""

    names: tuple[str, ...]
    type: type | None = None  # argparse's; None for a switch
    help: str | None = None
    default: Any = None
    invert: bool = False
    remote_only: bool = False
    choices: Sequence[str] | None = None


@dataclass(frozen=True)
class Stored:
    """The option once normalised by the API: its type and pydantic constraints."""

    type: Any
    default: Any = REQUIRED
    bounds: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerateOption:
    """One option of a generation job; see the module docstring."""

    name: str
    type: Any
    default: Any
    description: str | None = None
    bounds: dict[str, Any] = field(default_factory=dict)
    stored: Stored | None = None
    engine_default: Any = None
    flag: Flag | None = None

    def request_field(self) -> tuple[Any, Any]:
        kw = dict(self.bounds)
        if self.description is not None:
            kw["description"] = self.description
        return self.type, Field(self.default, **kw)

    def stored_field(self) -> tuple[Any, Any]:
        s = self.stored or Stored(self.type, self.default, dict(self.bounds))
        return s.type, Field(s.default, **s.bounds)


def request_model(
    name: str, doc: str, options: Sequence[GenerateOption], config: ConfigDict
) -> type[BaseModel]:
    """The request model (the API's schema): every option with its request type."""
    fields = {o.name: o.request_field() for o in options}
    return create_model(name, __config__=config, __doc__=doc, __module__=__name__, **fields)


def stored_model(name: str, doc: str, options: Sequence[GenerateOption]) -> type[BaseModel]:
    """The normalised request as stored: what a worker checks again (it trusts nothing it
    reads from Redis); other stored keys are ignored."""
    fields = {o.name: o.stored_field() for o in options}
    config = ConfigDict(extra="ignore")
    return create_model(name, __config__=config, __doc__=doc, __module__=__name__, **fields)


def engine_fields(options: Sequence[GenerateOption]) -> list[tuple[str, Any]]:
    """(name, default) of the options the engine takes, in declaration order."""
    return [(o.name, o.engine_default) for o in options if o.engine_default is not NOT_IN_ENGINE]
