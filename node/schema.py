"""Turns plain TOML tables into frozen settings dataclasses, naming the key path of every error.

A settings class declares its keys as dataclass fields with defaults; unknown keys are
errors (with a did-you-mean hint), and a class may add semantic checks in `check(path)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, TypeVar

from node.errors import ConfigError

T = TypeVar("T")


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def unknown_key(path: str, key: str, known: typing.Iterable[str]) -> ConfigError:
    known = sorted(known)
    hint = difflib.get_close_matches(key, known, n=1)
    suffix = f"; did you mean '{hint[0]}'?" if hint else f" (known: {', '.join(known)})"
    return ConfigError(f"{join(path, key)}: unknown key{suffix}")


def build(cls: type[T], data: Any, path: str) -> T:
    """Build the settings class `cls` from the table `data` found at `path`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a table, got {describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    # A class may take the keys it does not declare into one field, as (key, value) pairs
    # for a later check (a route's plugin tables, known only once the plugins are loaded).
    extra_field = getattr(cls, "EXTRA_KEYS_FIELD", None)
    if extra_field is not None:
        fields.pop(extra_field)
    extra = []
    for key in data:
        if key not in fields:
            if extra_field is None:
                raise unknown_key(path, key, fields)
            value = data[key]
            extra.append((key, value.parsed if isinstance(value, EnvValue) else value))
    hints = typing.get_type_hints(cls)
    values = {
        key: convert(hints[key], value, join(path, key))
        for key, value in data.items()
        if key in fields
    }
    if extra:
        values[extra_field] = tuple(extra)
    settings = cls(**values)
    check = getattr(settings, "check", None)
    if check is not None:
        check(path)
    return settings


class EnvValue:
    """A value from an environment variable: taken as text where the key wants a string
    (so `SCALENODE__NODE__ADMIN_TOKEN=123456` stays "123456"), else parsed as TOML."""

    def __init__(self, var: str, text: str, parsed: Any) -> None:
        self.var, self.text, self.parsed = var, text, parsed


def wants_text(hint: Any) -> bool:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint is str or (
        typing.get_origin(hint) in (typing.Union, types.UnionType) and args == [str]
    )


def convert(hint: Any, value: Any, path: str) -> Any:
    if isinstance(value, EnvValue):
        try:
            return convert(hint, value.text if wants_text(hint) else value.parsed, path)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {value.var})") from None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return convert(hint, value, path)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: must be a list, got {describe(value)}")
        return tuple(convert(args[0], item, join(path, i)) for i, item in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a table, got {describe(value)}")
        if not args:
            return dict(value)
        return {str(k): convert(args[1], v, join(path, k)) for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: must be a number, got {describe(value)}")
        if not math.isfinite(value):  # TOML has inf and nan; no setting means either
            raise ConfigError(f"{path}: must be a finite number, got {value}")
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{path}: must be an integer, got a boolean")
    if not isinstance(value, hint):
        raise ConfigError(f"{path}: must be {describe(hint())}, got {describe(value)}")
    return value


def require(condition: bool, path: str, reason: str) -> None:
    """Raise `ConfigError("<path>: <reason>")` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{path}: {reason}")
