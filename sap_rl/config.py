"""Typed configuration: dataclasses loaded from YAML with strict key and type checking.

Configs are plain (optionally nested) dataclasses. :func:`from_dict` builds one from a mapping and
rejects unknown keys and ill-typed values with a message that names the offending key, so a typo in
a YAML file is a one-line error rather than a silently ignored setting. No string in a config is
ever evaluated as code.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Opt:
    ...     lr: float = 1e-3
    ...     steps: int = 10
    >>> from_dict(Opt, {"lr": 0.5}).lr
    0.5
    >>> from_dict(Opt, {"lr": "fast"})
    Traceback (most recent call last):
    ...
    sap_rl.errors.UserError: config key 'lr': expected float, got str 'fast'
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sap_rl.errors import UserError
from sap_rl.io import atomic_write_text

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, validating keys and value types recursively.

    Args:
        cls: a dataclass type.
        data: mapping of field names to values (``None`` means all defaults).
        prefix: dotted path used in error messages for nested configs.

    Raises:
        UserError: on an unknown key, a missing required key, a value of the wrong type, or a
            ``ValueError`` raised by the dataclass's own ``__post_init__`` validation.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise UserError(
            f"config section '{prefix or cls.__name__}': expected a mapping, "
            f"got {type(data).__name__}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3)
            hint = (
                f"; did you mean {' or '.join(repr(c) for c in close)}?"
                if close
                else (f"; valid keys: {', '.join(sorted(fields))}")
            )
            raise UserError(f"unknown config key '{prefix}{key}'{hint}")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise UserError(f"config key '{prefix}{name}' is required")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, UserError):
            raise
        where = f" in '{prefix.rstrip('.')}'" if prefix else ""
        raise UserError(f"invalid config{where}: {err}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Convert a (nested) dataclass config into plain YAML/JSON-friendly Python values."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"{config!r} is not a dataclass instance")
    return _plain(dataclasses.asdict(config))


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (``UserError`` if missing, malformed or not a mapping)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; pass a YAML file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file; save the config as UTF-8 YAML") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping at top level, got {type(data).__name__}")
    return data


def load_config(
    cls: type[T], path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None
) -> T:
    """Load ``cls`` from a YAML file, with ``overrides`` deep-merged on top."""
    data = load_yaml(path)
    if overrides:
        data = deep_merge(data, overrides)
    return from_dict(cls, data)


def save_config(config: Any, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML, atomically (rl-baselines3-zoo style ``config.yaml``)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively by ``override`` (neither input is modified).

    Example:
        >>> deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}})
        {'a': {'x': 1, 'y': 3}}
    """
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except UserError as err:
                errors.append(str(err))
        names = " or ".join(_type_name(a) for a in args)
        raise UserError(f"config key '{key}': expected {names}, got {_describe(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise UserError(
            f"config key '{key}': expected one of {', '.join(map(repr, args))}, got {value!r}"
        )
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=f"{key}.")  # type: ignore[arg-type]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            item = args[0] if args else Any
            items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if (origin or tp) is tuple else items
    elif origin is dict or tp is dict:
        if isinstance(value, Mapping):
            vt = args[1] if len(args) == 2 else Any
            return {str(k): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    else:
        return value
    raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {_describe(value)}")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
