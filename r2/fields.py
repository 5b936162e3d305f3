"""Typed dataclass fields from untrusted sources: JSON metadata and `KEY=VALUE` text.

The allowed keys, which ones are required and the type of each value all come from the
dataclass itself (its fields and their annotations), so a field added to a dataclass is
accepted everywhere without another list to update. Supported annotations: `int`,
`float`, `bool`, `str`, `None`, unions of those (`float | None`), `tuple[T, ...]` and
fixed-length `tuple[T1, T2, ...]`; anything else is accepted unchecked.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from typing import Any

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
NONE_WORDS = ("none", "null")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved annotation} of a dataclass's init fields, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def required_fields(cls: type) -> list[str]:
    """The init fields of a dataclass that have no default."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def describe(tp: Any) -> str:
    """A readable name of an annotation: "an integer", "a list of strings", ..."""
    args = _union_args(tp)
    if args is not None:
        return " or ".join(describe(a) for a in args)
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)
        if len(inner) == 2 and inner[1] is Ellipsis:
            return f"a list of {describe(inner[0]).split(' ', 1)[1]}s"
        return f"a list of {len(inner)} values"
    return {int: "an integer", float: "a number", bool: "a boolean (true/false)",
            str: "a string", type(None): "null"}.get(tp, str(tp))  # fmt: skip


def value_problem(value: Any, tp: Any) -> str | None:
    """Why `value` (as read from JSON) does not fit annotation `tp`; None when it fits."""
    ok = _fits(value, tp)
    return None if ok else f"expected {describe(tp)}, got {value!r}"[:200]


def _fits(value: Any, tp: Any) -> bool:
    args = _union_args(tp)
    if args is not None:
        return any(_fits(value, a) for a in args)
    if tp is type(None) or tp is None:
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))  # fmt: skip
    if tp is str:
        return isinstance(value, str)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        inner = typing.get_args(tp)
        if len(inner) == 2 and inner[1] is Ellipsis:
            return all(_fits(v, inner[0]) for v in value)
        return len(value) == len(inner) and all(
            _fits(v, t) for v, t in zip(value, inner, strict=True)
        )
    return True  # an annotation this module does not check


def dataclass_problems(cls: type, data: Any, where: str = "") -> list[str]:
    """Every problem of `data` as the keyword arguments of `cls`: not a mapping, unknown or
    missing keys, values of the wrong type. Each problem names the field (`where.field`)."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        return [f"{where or cls.__name__}: expected an object of {cls.__name__} fields, "
                f"got {type(data).__name__}"]  # fmt: skip
    known = field_types(cls)
    problems = [f"{prefix}{key}: unknown field (not in {cls.__name__})"
                for key in data if key not in known]  # fmt: skip
    problems += [f"{prefix}{name}: missing" for name in required_fields(cls) if name not in data]
    for name, tp in known.items():
        if name in data:
            problem = value_problem(data[name], tp)
            if problem:
                problems.append(f"{prefix}{name}: {problem}")
    return problems


def parse_text(text: str, tp: Any) -> Any:
    """The value of a command-line `KEY=VALUE` text for annotation `tp`.

    Booleans: true/false/1/0/yes/no (any case); None: none/null; tuples: comma-separated
    ("cross,self") or a JSON list ("[1, 2, 4]").

    Raises:
        ValueError: the text does not fit `tp` (the message says what was expected).
    """
    word = text.strip()
    args = _union_args(tp)
    if args is not None:
        if type(None) in args and word.lower() in NONE_WORDS:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_text(text, arg)
            except ValueError:
                continue
        raise ValueError(f"expected {describe(tp)}, got {text!r}")
    if tp is bool:
        if word.lower() in TRUE_WORDS:
            return True
        if word.lower() in FALSE_WORDS:
            return False
        raise ValueError(f"expected a boolean (true/false/1/0/yes/no), got {text!r}")
    if tp is int:
        try:
            return int(word)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if tp is float:
        try:
            value = float(word)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        return value
    if typing.get_origin(tp) is tuple:
        return _parse_tuple(word, tp)
    return text  # str or an unchecked annotation


def _parse_tuple(word: str, tp: Any) -> tuple:
    if word.startswith("["):
        try:
            items = [str(x) for x in json.loads(word)]
        except (json.JSONDecodeError, TypeError):
            raise ValueError(f"expected {describe(tp)}, got {word!r}") from None
    else:
        items = [x.strip() for x in word.split(",") if x.strip()]
    inner = typing.get_args(tp)
    types_ = [inner[0]] * len(items) if len(inner) == 2 and inner[1] is Ellipsis else inner
    if len(types_) != len(items):
        raise ValueError(f"expected {describe(tp)}, got {word!r}")
    return tuple(parse_text(x, t) for x, t in zip(items, types_, strict=True))


def parse_assignments(cls: type, items: list[str], option: str = "--config") -> dict[str, Any]:
    """`["dims=64", "padding_invariant=true"]` -> {"dims": 64, ...}, typed by `cls`'s fields.

    Raises:
        ValueError: listing every bad item at once (malformed, unknown key, wrong type).
    """
    known = field_types(cls)
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"{item!r}: expected KEY=VALUE")
        elif key not in known:
            problems.append(f"{key}: unknown {cls.__name__} field (known: {', '.join(known)})")
        else:
            try:
                out[key] = parse_text(text, known[key])
            except ValueError as err:
                problems.append(f"{key}: {err}")
    if problems:
        raise ValueError(f"invalid {option} value(s): " + "; ".join(problems))
    return out
