"""How the config dataclasses of :mod:`att3d.config` are validated: by pydantic, where they are declared.

``config_dataclass`` turns a class into a pydantic dataclass (still a ``dataclasses`` dataclass for
``fields``/``asdict``/``replace``) that forbids unknown keys and non-finite floats and checks every
``Literal``, ``Field(ge=...)`` and model validator on construction. Scalars are strict as YAML needs them:
no bool for an int, no ``"3"`` for an int, but an int or a numeric string (YAML 1.1 reads ``1e-2`` as a
string) for a float. Pydantic's errors are turned into one :class:`ConfigError` naming each dotted key.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import annotated_types
import pydantic
from pydantic import BeforeValidator, ConfigDict, Field, Strict, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the offending key."""


class KeyProblem(ValueError):
    """Raised by a model validator about one of its fields: the message is reported under ``key``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _yaml_number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # the float validator names the key
    return value


# A finite float; an int or a numeric string is accepted, a bool is not. The limits sit before the
# string-parsing validator so that pydantic folds them into the float schema (JSON schema: minimum, ...).
Number = Annotated[float, Strict(), BeforeValidator(_yaml_number)]
PositiveNumber = Annotated[float, Strict(), Field(gt=0), BeforeValidator(_yaml_number)]
NonNegativeNumber = Annotated[float, Strict(), Field(ge=0), BeforeValidator(_yaml_number)]
Fraction = Annotated[float, Strict(), Field(ge=0, le=1), BeforeValidator(_yaml_number)]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]

_SETTINGS = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)


def config_dataclass(section: str) -> Callable[[type[T]], type[T]]:
    """Make ``cls`` a validating dataclass; errors of a direct construction name keys under ``section``."""

    def wrap(cls: type[T]) -> type[T]:
        cls = pydantic.dataclasses.dataclass(cls, config=_SETTINGS)
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as err:
                raise ConfigError(describe(err, cls, section)) from None

        cls.__init__ = __init__  # type: ignore[method-assign]
        return cls

    return wrap


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


def validate(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """``cls`` built from plain nested data; errors name keys under ``path``."""
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as err:
        raise ConfigError(describe(err, cls, path)) from None


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------

_EXPECTED = {
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true/false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "dict_type": "expected a mapping",
    "dataclass_type": "expected a mapping",
}
_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")


def describe(err: ValidationError, cls: type, prefix: str) -> str:
    """One line per problem, joined by ``; ``, each starting with its dotted key (unknown keys first)."""
    unknown: dict[tuple, list[str]] = {}
    problems = []
    for error in err.errors():
        loc = tuple(error["loc"])
        if error["type"] in _UNKNOWN:
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        loc, message = _problem(error, loc, cls)
        problems.append(f"{_dotted(prefix, loc) or 'config'}: {message}")
    for parent, names in unknown.items():
        where = _dotted(prefix, parent)
        known = ", ".join(sorted(f.name for f in dataclasses.fields(_type_at(cls, parent))))
        problems.insert(
            0, f"unknown config key{f' in {where!r}' if where else ''}: {', '.join(names)} (known: {known})"
        )
    return "; ".join(problems)


def _problem(error: Any, loc: tuple, cls: type) -> tuple[tuple, str]:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error["input"]
    if kind == "value_error" and isinstance(ctx.get("error"), KeyProblem):
        return (*loc, ctx["error"].key), str(ctx["error"])
    if kind == "value_error":
        return loc, str(ctx["error"])
    if kind in ("too_short", "too_long") or (kind == "missing" and loc and isinstance(loc[-1], int)):
        if kind == "missing":
            loc = loc[:-1]
        size = len(typing.get_args(_type_at(cls, loc)))
        return loc, f"expected {size} values, got {len(value)}"
    if kind in _EXPECTED:
        shown = type(value).__name__ if kind in ("dict_type", "dataclass_type") else repr(value)
        return loc, f"{_EXPECTED[kind]}, got {shown}"
    if kind == "finite_number":
        return loc, f"must be a finite number, got {value!r}"
    if kind == "literal_error":
        choices = typing.get_args(_type_at(cls, loc))
        return loc, f"must be one of {', '.join(map(str, choices))}, got {value!r}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return loc, f"must be {_bounds(cls, loc)}, got {value!r}"
    return loc, error["msg"]


def _bounds(cls: type, loc: tuple) -> str:
    """``in [lo, hi]``, ``>= lo``, ``> lo`` or ``<= hi`` from the field's ``Field(...)`` constraints."""
    metadata = _type_at(cls, loc[:-1]).__pydantic_fields__[loc[-1]].metadata
    limits = {sign: getattr(m, attr) for m in metadata for kind, attr, sign in _LIMITS if isinstance(m, kind)}
    if ">=" in limits and "<=" in limits:
        return f"in [{limits['>=']}, {limits['<=']}]"
    return " and ".join(f"{sign} {value}" for sign, value in limits.items())


_LIMITS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def _type_at(cls: type, loc: tuple) -> Any:
    """The declared type at ``loc`` below ``cls`` (dataclass fields by name; Annotated stripped)."""
    tp: Any = cls
    for part in loc:
        if isinstance(part, str) and hasattr(tp, "__pydantic_fields__"):
            tp = tp.__pydantic_fields__[part].annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) in (list, tuple):
            args = typing.get_args(tp)
            tp = args[part] if typing.get_origin(tp) is tuple else args[0]
        while typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
    return tp


def _dotted(prefix: str, loc: tuple) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
