"""Argument checks shared by the core modules (STYLE.md house rule 14: errors are loud and name the value).

Every helper returns the checked value so call sites read ``n = check_int("num_keep", num_keep, minimum=1)``.
``bool`` is rejected wherever an integer or a real number is expected: ``True`` as a length is always a bug.
"""

import math
from collections.abc import Sequence
from typing import Any


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; expected an int")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} is below {minimum}; expected an int >= {minimum}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; expected a bool")
    return value


def check_real(name: str, value: Any, minimum: float | None = None) -> float:
    """A finite int or float (not bool), optionally >= ``minimum``; returned as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; expected a finite float")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not finite; expected a finite float")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value!r} is below {minimum}; expected a finite float >= {minimum}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")
    return value


def check_sequence(name: str, value: Any) -> Sequence[Any]:
    # A str is a Sequence too, but never a valid list of lengths or flags.
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; expected a list or tuple")
    return value


def check_lengths(name: str, values: Any) -> list[int]:
    """Token counts: a sequence of non-negative ints."""
    check_sequence(name, values)
    for j, value in enumerate(values):
        check_int(f"{name}[{j}]", value, minimum=0)
    return list(values)


def check_flags(name: str, values: Any, expected_len: int, len_name: str) -> list[bool]:
    """One bool per candidate; ``len_name`` names what the length must match, for the message."""
    check_sequence(name, values)
    if len(values) != expected_len:
        raise ValueError(
            f"{name} has {len(values)} entries but {len_name} has {expected_len}; expected one per candidate"
        )
    for j, value in enumerate(values):
        check_bool(f"{name}[{j}]", value)
    return list(values)
