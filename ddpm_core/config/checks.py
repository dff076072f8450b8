"""Typed field checks shared by every config of ours, and the error they raise.

A check returns the value (normalised: an int, a float, a tuple) or raises
:class:`ConfigError` naming the field, e.g. ``unet.norm_groups must be at least 1, got 0``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ConfigError",
    "is_int",
    "is_real",
    "check_int",
    "check_float",
    "check_bool",
    "check_choice",
    "check_int_list",
    "FieldRule",
    "int_rule",
    "float_rule",
    "list_rule",
    "BOOL_RULE",
]


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; ``field`` names it (dotted)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem

    def within(self, prefix: str) -> ConfigError:
        """The same error with ``prefix.`` in front of the field name."""
        return type(self)(f"{prefix}.{self.field}", self.problem)


def is_int(v: Any) -> bool:
    """An integer that is not a bool (JSON's true is no count)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    """A real number that is not a bool; ints count."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_int(name: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``v`` as an int in [lo, hi]; bools, floats and strings are refused."""
    if not is_int(v):
        raise ConfigError(name, f"must be an integer, got {v!r}")
    v = int(v)
    if lo is not None and v < lo:
        raise ConfigError(name, f"must be at least {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(name, f"must be at most {hi}, got {v}")
    return v


def check_float(
    name: str,
    v: Any,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``v`` as a finite float within the bounds (open where asked); ints are accepted."""
    if not is_real(v):
        raise ConfigError(name, f"must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ConfigError(name, f"must be finite, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ConfigError(name, f"must be {'above' if lo_open else 'at least'} {lo}, got {v}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ConfigError(name, f"must be {'below' if hi_open else 'at most'} {hi}, got {v}")
    return v


def check_bool(name: str, v: Any) -> bool:
    """``v`` if it is a bool (no truthy ints or strings)."""
    if not isinstance(v, bool):
        raise ConfigError(name, f"must be true or false, got {v!r}")
    return v


def check_choice(name: str, v: Any, choices: tuple[str, ...]) -> str:
    """``v`` if it is one of the names ``choices``."""
    if not isinstance(v, str) or v not in choices:
        raise ConfigError(name, f"must be one of {list(choices)}, got {v!r}")
    return v


def check_int_list(
    name: str, v: Any, lo: int, hi: int, min_len: int = 0, max_len: int = 64
) -> tuple[int, ...]:
    """A list (or tuple) of ints in [lo, hi] with min_len..max_len entries, as a tuple."""
    if not isinstance(v, list | tuple):
        raise ConfigError(name, f"must be a list of integers, got {v!r}")
    if not min_len <= len(v) <= max_len:
        raise ConfigError(name, f"must have {min_len} to {max_len} entries, got {len(v)}")
    return tuple(check_int(f"{name}[{i}]", x, lo, hi) for i, x in enumerate(v))


@dataclass(frozen=True)
class FieldRule:
    """How one config field is checked, and its JSON schema (for the API's docs)."""

    check: Callable[[str, Any], Any]
    schema: dict[str, Any]
    nullable: bool = False

    def __call__(self, name: str, v: Any) -> Any:
        if v is None and self.nullable:
            return None
        return self.check(name, v)


def int_rule(lo: int, hi: int, nullable: bool = False) -> FieldRule:
    """An integer in [lo, hi] (or null)."""
    schema: dict[str, Any] = {"type": "integer", "minimum": lo, "maximum": hi}
    if nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return FieldRule(lambda n, v: check_int(n, v, lo, hi), schema, nullable)


def float_rule(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> FieldRule:
    """A finite number between lo and hi, each bound open where asked."""
    schema: dict[str, Any] = {"type": "number"}
    schema["exclusiveMinimum" if lo_open else "minimum"] = lo
    schema["exclusiveMaximum" if hi_open else "maximum"] = hi
    return FieldRule(lambda n, v: check_float(n, v, lo, hi, lo_open, hi_open), schema)


def list_rule(lo: int, hi: int, min_len: int, max_len: int, nullable: bool = False) -> FieldRule:
    """A list of min_len..max_len integers in [lo, hi] (or null)."""
    schema: dict[str, Any] = {
        "type": "array",
        "items": {"type": "integer", "minimum": lo, "maximum": hi},
        "minItems": min_len,
        "maxItems": max_len,
    }
    if nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return FieldRule(lambda n, v: check_int_list(n, v, lo, hi, min_len, max_len), schema, nullable)


BOOL_RULE = FieldRule(check_bool, {"type": "boolean"})
