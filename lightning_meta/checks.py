"""Argument checks shared by every public class: a ``ValueError`` that names the argument, the bad value and
what would be valid, raised at construction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def check_positive(name: str, value: int, minimum: int = 1) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_number(name: str, value: float, minimum: float = 0.0, strict: bool = True) -> None:
    """Raise a ``ValueError`` unless ``value`` is a finite number above ``minimum`` (or equal, ``strict=False``)."""
    bad = not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
    if bad or value < minimum or (strict and value == minimum):
        sign = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {sign} {minimum:g}, got {value!r}")


def check_factory(name: str, value: Any, example: str) -> None:
    """Raise a ``ValueError`` unless ``value`` is None or a callable that builds the object (not the object)."""
    if value is not None and not callable(value):
        shown = repr(value) if len(repr(value)) <= 60 else f"an instance of {type(value).__name__}"
        raise ValueError(f"{name} must be a callable that builds it (e.g. {example}) or None, got {shown}")


def check_fraction(name: str, value: float) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is a number in ``[0, 1)`` (a drop rate)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def check_int_sequence(name: str, value: Any, length: int, example: tuple) -> tuple[int, ...]:
    """``value`` as a tuple of ``length`` ints >= 1, or a ``ValueError`` naming ``name`` and an ``example``."""
    items = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
    valid = isinstance(items, tuple) and len(items) == length and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items)
    if not valid:
        raise ValueError(f"{name} must be {length} ints >= 1 (e.g. {example}), got {value!r}")
    return items
