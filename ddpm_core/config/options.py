"""How a configuration option is declared, once: in the metadata of its dataclass field.

    steps: int = option(1000, ge=1, request_limits=Limits(ge=1, le=MAX_TRAIN_STEPS),
                        cli=Flag(("--steps",), help="optimizer steps (default 1000)"))

An :class:`Option` says what the library accepts (type from the annotation, bounds,
choices), what the API shows and accepts (a description, whether a request may set the
field at all, stricter request bounds, extra JSON schema) and how the command line sets it
(a :class:`Flag`). :func:`check_options` validates a dataclass instance from these
declarations; the API's request model and the CLI's flags are built from
:func:`declared_options`. Plain Python: no torch, no pydantic, no argparse.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ddpm_core.config.checks import is_int, is_real

__all__ = [
    "Limits",
    "Flag",
    "Option",
    "option",
    "Declared",
    "declared_options",
    "check_options",
]


@dataclass(frozen=True)
class Limits:
    """Bounds of a number (``ge`` ``gt`` ``le`` ``lt``, as pydantic names them) or of each
    number of a tuple, and the pattern of a string."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    pattern: str | None = None

    def kwargs(self) -> dict[str, Any]:
        """The limits that are set, as keyword arguments (e.g. of ``pydantic.Field``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def admits(self, v: float) -> bool:
        """Whether the number ``v`` lies within the bounds (NaN never does)."""
        return not (
            (self.ge is not None and not v >= self.ge)
            or (self.gt is not None and not v > self.gt)
            or (self.le is not None and not v <= self.le)
            or (self.lt is not None and not v < self.lt)
        )

    def describe(self) -> str:
        """The bounds as a reader expects them: ``>= 0``, ``> 0``, ``in [0, 1)``."""
        lo = ("[", self.ge) if self.ge is not None else None
        lo = ("(", self.gt) if lo is None and self.gt is not None else lo
        hi = ("]", self.le) if self.le is not None else None
        hi = (")", self.lt) if hi is None and self.lt is not None else hi
        if lo and hi:
            return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
        if lo:
            return f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
        if hi:
            return f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
        return ""


def _num(v: float) -> str:
    return str(v) if is_int(v) else f"{v:g}"


@dataclass(frozen=True)
class Flag:
    """The command-line flag of an option.

    ``names``: the flag and its aliases. ``help``: its line in ``--help``; ``metavar``: its
    value's name there (None: argparse's, from the field's name). ``choices``:
    True to offer the option's choices, False to take any value (the config checks it),
    or a mapping from the names the flag accepts to the values they stand for (short
    names, e.g. ``--prediction v``). ``none_at``: the flag value that stands for None
    (``--grad-clip 0``). ``custom``: the CLI declares and parses this flag itself, its
    value needing more than a type (``--unet KEY=VALUE``, ``--resume [CHECKPOINT]``).
    A bool option is a store-true flag.
    """

    names: tuple[str, ...]
    help: str | None = None
    metavar: str | None = None
    choices: bool | Mapping[str, Any] = True
    none_at: Any = None
    custom: bool = False


@dataclass(frozen=True)
class Option:
    """Everything declared about one option besides its type and default.

    ``cli``: its flag, or None for an option the command line does not set.
    ``description``: its description in the API's schema (None: none).
    ``limits``, ``choices``: what the library accepts. ``request``: whether a request
    (``POST /train``) may set it; False for what belongs to whoever runs it (directories,
    devices). ``request_limits``: the request's bounds where stricter than ``limits``.
    ``schema``: JSON schema the type does not say (an object's properties).
    """

    cli: Flag | None
    description: str | None = None
    limits: Limits = Limits()
    choices: tuple[Any, ...] | None = None
    request: bool = True
    request_limits: Limits | None = None
    schema: dict[str, Any] | None = None

    @property
    def api_limits(self) -> Limits:
        """The bounds a request must meet."""
        return self.request_limits or self.limits


def option(
    default: Any = dataclasses.MISSING,
    *,
    cli: Flag | None,
    default_factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    **declared: Any,
) -> Any:
    """A dataclass field with its :class:`Option` (``cli`` must be given: a flag or None);
    ``ge``..``lt`` are the library's bounds, the other keywords those of :class:`Option`."""
    opt = Option(cli=cli, limits=Limits(ge=ge, gt=gt, le=le, lt=lt), **declared)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"option": opt})
    return field(default=default, metadata={"option": opt})


@dataclass(frozen=True)
class Declared:
    """One declared field: its name, its type in parts and its :class:`Option`.

    ``type`` is the base type (int, float, bool, str, dict or tuple), ``nullable``
    whether None is allowed, ``length`` a tuple's number of entries. ``default`` or
    ``default_factory`` (the other is MISSING) is the dataclass field's.
    """

    name: str
    type: type
    nullable: bool
    length: int | None
    default: Any
    default_factory: Any
    option: Option


def _split(annotation: Any) -> tuple[type, bool, int | None]:
    """(base type, nullable, tuple length) of ``int``, ``float | None``,
    ``tuple[float, float]``..."""
    args = typing.get_args(annotation)
    nullable = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"unsupported option type {annotation!r}")
        annotation, nullable = rest[0], True
        args = typing.get_args(annotation)
    origin = typing.get_origin(annotation) or annotation
    if origin is tuple:
        if not args or Ellipsis in args or any(a is not float for a in args):
            raise TypeError(f"unsupported option type {annotation!r} (a tuple of floats)")
        return tuple, nullable, len(args)
    if origin not in (int, float, bool, str, dict):
        raise TypeError(f"unsupported option type {annotation!r}")
    return origin, nullable, None


@cache
def declared_options(cls: type) -> tuple[Declared, ...]:
    """The declared fields of the dataclass ``cls``, in declaration order; TypeError for a
    field without an :class:`Option` (every field must declare one)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        opt = f.metadata.get("option")
        if not isinstance(opt, Option):
            raise TypeError(f"{cls.__name__}.{f.name} has no Option (declare it with option())")
        base, nullable, length = _split(hints[f.name])
        out.append(Declared(f.name, base, nullable, length, f.default, f.default_factory, opt))
    return tuple(out)


_COUNTS = {1: "one", 2: "two", 3: "three", 4: "four"}


def _either(choices: tuple[Any, ...]) -> str:
    names = [str(c) for c in choices]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _problem(d: Declared, v: Any) -> str | None:
    """What is wrong with value ``v`` of field ``d`` (None: nothing), without the name."""
    opt, limits = d.option, d.option.limits
    if v is None and d.nullable:
        return None
    if d.type is bool and not isinstance(v, bool):
        return f"must be true or false, got {v!r}"
    if d.type is int and not is_int(v):
        return f"must be an integer, got {v!r}"
    if d.type is float:
        if not is_real(v):
            return f"must be a number, got {v!r}"
        if not math.isfinite(v):
            return "must be finite"
    if d.type is str and not isinstance(v, str):
        return f"must be a string, got {v!r}"
    if d.type is dict and not isinstance(v, dict):
        return f"must be an object, got {v!r}"
    if d.type is tuple:
        ok = isinstance(v, tuple | list) and len(v) == d.length
        ok = ok and all(is_real(x) and limits.admits(float(x)) for x in v)
        if not ok:  # (NaN fails every comparison, so it lands here too)
            within = f" {limits.describe()}" if limits.kwargs() else ""
            return f"must be {_COUNTS.get(d.length, d.length)} numbers{within}"
        return None
    if opt.choices is not None and v not in opt.choices:
        return f"must be {_either(opt.choices)}, not {v!r}"
    if d.type in (int, float) and not limits.admits(v):
        return f"must be {limits.describe()}" + (" (or None)" if d.nullable else "")
    return None


def check_options(obj: Any) -> list[str]:
    """The problems of the dataclass instance ``obj`` against its declarations, one
    ``"<field> <problem>"`` per offending field, in declaration order."""
    problems = []
    for d in declared_options(type(obj)):
        problem = _problem(d, getattr(obj, d.name))
        if problem is not None:
            problems.append(f"{d.name} {problem}")
    return problems
