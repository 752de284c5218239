"""Typed configs from JSON: strict loading, dotted ``--set`` overrides, one-line errors.

A config is a tree of dataclasses. ``from_dict`` builds it from plain JSON data, rejecting unknown keys
(with the closest known key suggested) and values of the wrong type, always naming the dotted key.
Semantic rules (e.g. ``norm_num_groups`` divides every channel count) live in each config's
``validate()``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from medgen.errors import MedgenError

T = TypeVar("T")


class ConfigError(MedgenError, ValueError):
    """A config value a user must change; the message names the key, the value and the fix."""

    kind = "config error"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (lists to tuples, ints to floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}=null is not allowed; expected {_type_name(tp)}")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}={json.dumps(value)} has the wrong type; expected {_type_name(tp)}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {json.dumps(close[0])}?)" if close else ""
            raise ConfigError(f"{key}={json.dumps(value)} is not one of {', '.join(json.dumps(a) for a in allowed)}{hint}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={json.dumps(value)} must be a list, e.g. [{json.dumps(value)}]")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be an object with keys {', '.join(f.name for f in dataclasses.fields(tp))}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={json.dumps(value)} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={json.dumps(value)} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={json.dumps(value)} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={json.dumps(value)} must be a string")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")



def check_optimiser(section: Any, prefix: str, betas_example: str) -> None:
    """The optimiser keys every training section shares: ``betas`` (Adam, two numbers in [0, 1)) and, where
    the section has them, ``ema_decay`` (in (0, 1) or null) and ``grad_clip`` (positive or null)."""
    if len(section.betas) != 2 or not all(0 <= b < 1 for b in section.betas):
        raise ConfigError(f"{prefix}betas={list(section.betas)} must be two numbers in [0, 1), e.g. {betas_example}")
    decay = getattr(section, "ema_decay", None)
    if decay is not None and not 0 < decay < 1:
        raise ConfigError(f"{prefix}ema_decay={decay} must be between 0 and 1 (e.g. 0.999), or null for off")
    clip = getattr(section, "grad_clip", None)
    if clip is not None and clip <= 0:
        raise ConfigError(f"{prefix}grad_clip={clip} must be positive (e.g. 1.0), or null for off")

def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in data]
    if required:
        raise ConfigError(f"config key {prefix}{required[0]} is required")
    kwargs = {name: _convert(data[name], hints[name], f"{prefix}{name}") for name in fields if name in data}
    return cls(**kwargs)


def check_types(cfg: Any, prefix: str = "") -> None:
    """Check every field of the dataclass instance ``cfg`` (built in code rather than by :func:`from_dict`) against
    its annotation, as :func:`from_dict` checks JSON values; :class:`ConfigError` names the key. Nested config
    sections are not checked here: their own ``validate`` does it."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if not dataclasses.is_dataclass(hints[f.name]):
            _convert(getattr(cfg, f.name), hints[f.name], f"{prefix}{f.name}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=VALUE"`` -> (["a", "b"], value); VALUE is JSON, or a plain string when it is not JSON."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} must look like key.path=VALUE, e.g. autoencoder_train.lr=1e-5")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to raw config data (in place; also returned)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file with errors that name the file and the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object at the top level")
    return data


class JsonConfig:
    """``to_dict`` / ``to_json`` / ``from_json`` for a dataclass config whose ``from_dict`` checks the keys."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return to_dict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON text; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, path: str | Path):
        """Read a JSON file (an object of the config's keys); errors name the file and line."""
        return cls.from_dict(read_json(path))

    @classmethod
    def coerce(cls, config: Any, owner: str):
        """``config`` as this class: an instance as is, a dict through ``from_dict``, a path through ``from_json``.

        Raises:
            TypeError: anything else (``owner`` names the caller in the message).
        """
        if isinstance(config, cls):
            return config
        if isinstance(config, (str, os.PathLike)):
            return cls.from_json(config)
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        raise TypeError(f"{owner}: expected a {cls.__name__}, dict or JSON path, got {type(config).__name__}.")
