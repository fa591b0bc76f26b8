"""Typed configs: dataclass defaults < YAML file < `key=value` overrides (OmegaConf).

Every run saves the resolved config next to its outputs, so it can be reproduced exactly.

Bad values are refused before any work, in one line that names the key, the value, what was expected and
who set it (the command line, a file, or a preset): each dataclass states the interval of every numeric
field with `check_ranges` in its `__post_init__`, and `load_config` turns that into the dotted key.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aemg_dist import storage
from aemg_dist.errors import ConfigError

T = TypeVar("T")
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; a larger one is not a config (and is not parsed)


class FieldError(ConfigError):
    """A field's value is outside what it accepts. Raised by `check_ranges` with the field's own name;
    `load_config` finds the dotted key and who set it."""

    def __init__(self, owner: type, name: str, value: Any, expected: str):
        self.owner, self.name, self.value, self.expected = owner, name, value, expected
        super().__init__(f"{name}={value!r}: expected {expected}")


_INTERVAL = re.compile(r"([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])")


def check_ranges(config: Any, **intervals: str) -> None:
    """Refuse a non-finite float in any field of the dataclass `config`, and a named numeric field (or any
    element of a list field) outside its interval, written as in mathematics: "(0, 10]", "[1, inf)".

    Called from `__post_init__`, so a config made in code is held to the same ranges as one loaded from YAML.
    """
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(type(config), f.name, value, f"a finite number{_in(intervals.get(f.name))}")
    for name, interval in intervals.items():
        value = getattr(config, name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if not _inside(item, interval):
                raise FieldError(type(config), name, value, f"a number{_in(interval)}")


def _in(interval: str | None) -> str:
    return f" in {interval}" if interval else ""


def _inside(value: Any, interval: str) -> bool:
    match = _INTERVAL.fullmatch(interval)
    if match is None:
        raise TypeError(f"not an interval: {interval!r}")  # a programming error, not a user's
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    opening, low, high, closing = match.groups()
    low_ok = value >= float(low) if opening == "[" else value > float(low)
    high_ok = value <= float(high) if closing == "]" else value < float(high)
    return low_ok and high_ok


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats (`1e3` is a number, as a person reads it, not the string
    YAML 1.1 makes of it) and without aliases (an alias bomb would expand without bound once merged)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not supported", event.start_mark)
        return super().compose_node(parent, index)


_Loader.add_implicit_resolver(  # YAML 1.1 already reads 1.0e3, 0.5 and .inf as floats; 1e3 is the gap
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(text: str, where: str | Path) -> Any:
    """Parse YAML text; a syntax error becomes one line with the file, line and column (ConfigError)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}{at})") from None


def dotted(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as {dotted key: value}, so a difference is named down to the setting ("train.lr")."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(dotted(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {f"{prefix}{key}": value})
    return flat


def load_config(schema: type[T], path: str | Path | Sequence[str | Path | Mapping] | None = None,
                overrides: Sequence[str] = ()) -> T:
    """Merge defaults, optional layers (YAML files or mappings; later ones win) and `key=value`
    overrides into a `schema` instance.

    Unknown keys, wrong types, non-finite numbers and values outside a field's range raise ConfigError naming
    the key, the value and who set it (an override, a file or the default; a mapping layer is named by the caller),
    before any work starts.
    """
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    layers = [(_source(layer), config_layer(layer)) for layer in paths]
    layers += [(f"the override {o}", _override(o, schema)) for o in overrides]
    merged = OmegaConf.structured(schema)
    for where, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except (OmegaConfBaseException, TypeError) as err:  # TypeError: a mapping where a list belongs, or back
            key = getattr(err, "full_key", None)
            message = str(getattr(err, "msg", err)).splitlines()[0]
            place = f" in {where}" if where else ""
            raise ConfigError(f"bad {schema.__name__}{place}: " + (f"{key}: " if key else "") + message) from None
    try:
        config = OmegaConf.to_object(merged)
    except FieldError as err:
        key = _locate(merged, err)
        who = _blame(key, layers)
        raise ConfigError(f"bad {schema.__name__}: {key}={err.value!r}{f' (from {who})' if who else ''}: expected "
                          f"{err.expected}") from None
    except OmegaConfBaseException as err:
        message = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"bad {schema.__name__}: {message}") from None
    except ValueError as err:  # a dataclass __post_init__ check across fields
        raise ConfigError(f"bad {schema.__name__}: {err}") from None
    _check_finite(config, "")
    return config  # type: ignore[return-value]


def _source(layer: str | Path | Mapping) -> str:
    """A layer as blamed in messages: a file by its path; a mapping (a preset, a checkpoint's settings) by nothing,
    as the caller names its source."""
    return "" if isinstance(layer, Mapping) else str(layer)


def config_layer(layer: str | Path | Mapping) -> DictConfig:
    """One layer as an OmegaConf mapping: a mapping as given, or a YAML file or URI (read at most
    MAX_CONFIG_BYTES; it must hold a mapping of settings)."""
    if isinstance(layer, Mapping):
        return OmegaConf.create(dict(layer))
    layer = config_path(layer)
    if not storage.exists(layer):  # a file or a URI (e.g. a run's config.yaml on S3)
        raise ConfigError(f"config file {layer} does not exist")
    if storage.isdir(layer):
        raise ConfigError(f"config file {layer} is a folder, not a YAML file")
    if storage.size(layer) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {layer} is {storage.size(layer)} bytes, not a YAML config "
                          f"(at most {MAX_CONFIG_BYTES})")
    try:
        text = storage.read_text(layer)
    except UnicodeDecodeError:
        raise ConfigError(f"config file {layer} is not text") from None
    values = read_yaml(text, layer)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {layer}: expected a mapping of settings (key: value), got a "
                          f"{type(values).__name__}")
    try:
        return OmegaConf.create(values)
    except OmegaConfBaseException as err:
        raise ConfigError(f"config file {layer}: {str(getattr(err, 'msg', err)).splitlines()[0]}") from None


def _override(override: str, schema: type) -> DictConfig:
    try:
        return OmegaConf.from_dotlist([override])
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        message = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"bad {schema.__name__} in the override {override}: {message}") from None


def _locate(merged: DictConfig, err: FieldError) -> str:
    """The dotted key of the field a FieldError names: where a node of its dataclass holds that value."""
    found = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig):
            if OmegaConf.get_type(node) is err.owner and err.name in node:
                found.append((f"{prefix}{err.name}", node[err.name]))
            for key in node.keys():
                if not OmegaConf.is_missing(node, key):
                    walk(node._get_node(key), f"{prefix}{key}.")  # noqa: SLF001 - no interpolation resolved
        elif isinstance(node, ListConfig):
            for i in range(len(node)):
                walk(node._get_node(i), f"{prefix}{i}.")  # noqa: SLF001

    walk(merged, "")
    same = [key for key, value in found if _same(value, err.value)]
    return (same or [key for key, _ in found] or [err.name])[0]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, ListConfig):
        a = OmegaConf.to_container(a)
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or a == b


def _blame(key: str, layers: list[tuple[str, DictConfig]]) -> str:
    """Who set `key`: the last layer that holds it ("" for a mapping), or the dataclass's default."""
    for where, layer in reversed(layers):
        if OmegaConf.select(layer, key, default=None, throw_on_missing=False) is not None:
            return where
    return "the default"


def _check_finite(config: Any, prefix: str) -> None:
    """Every float in the config tree (lists included) is finite, whether or not its dataclass checks it."""
    values = {f.name: getattr(config, f.name) for f in fields(config)} if is_dataclass(config) else \
        dict(enumerate(config)) if isinstance(config, list) else config if isinstance(config, dict) else {}
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{name}={value!r}: expected a finite number")
        if is_dataclass(value) or isinstance(value, (list, dict)):
            _check_finite(value, f"{prefix}{name}.")


def config_from_dict(schema: type[T], values: dict) -> T:
    """Rebuild a config from `dataclasses.asdict` output (e.g. after crossing a process boundary)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))  # type: ignore[return-value]


def save_config(config: object, path: str | Path) -> str | Path:
    """Write the resolved config as YAML to a file or a URI; returns the path."""
    if not is_dataclass(config):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    storage.write_text(path, OmegaConf.to_yaml(OmegaConf.structured(config)))
    return path


def config_path(path: str | Path) -> str | Path:
    """`path` as given when it exists (or is a URI); else a relative `configs/...` path names a shipped config, so the
    README's `--config configs/pretrain/tiny.yaml` works from an installed wheel in any working directory."""
    parts = Path(path).parts
    if storage.is_uri(path) or storage.exists(path) or len(parts) < 2 or parts[0] != "configs":
        return path
    shipped = shipped_configs().joinpath(*parts[1:])
    return shipped if shipped.is_file() else path


def shipped_configs() -> Path:
    """The configs the project ships (model presets, pretraining, sweep, scaling, evaluation, splits, datasets).

    An installed wheel holds them as the package data `aemg_dist.configs` (pyproject.toml maps the checkout's
    configs/ there); a checkout on the path (an editable install, PYTHONPATH, a Ray job's working_dir) has them
    next to the package. Wheels install unpacked, so either is a folder on disk."""
    package = Path(str(resources.files("aemg_dist")))
    inside = package / "configs"
    return inside if inside.is_dir() else package.parent / "configs"
