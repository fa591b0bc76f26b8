"""Typed configs: dataclass defaults < YAML file < `key=value` overrides (OmegaConf).

Every run saves the resolved config next to its outputs, so it can be reproduced exactly.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from pathlib import Path
from typing import Mapping, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not fit the config's schema or values."""


def load_config(schema: type[T], path: str | Path | Sequence[str | Path | Mapping] | None = None,
                overrides: Sequence[str] = ()) -> T:
    """Merge defaults, optional layers (YAML files or mappings; later ones win) and `key=value`
    overrides into a `schema` instance.

    Unknown keys, wrong types and values rejected by the dataclass's own checks raise
    ConfigError naming the culprit, before any work starts.
    """
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    from aemg_dist import storage  # a late import: storage imports ConfigError from here

    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    try:
        merged = OmegaConf.structured(schema)
        for layer in paths:
            if isinstance(layer, Mapping):
                merged = OmegaConf.merge(merged, layer)
                continue
            if not storage.exists(layer):  # a file or a URI (e.g. a run's config.yaml on S3)
                raise ConfigError(f"config file {layer} does not exist")
            merged = OmegaConf.merge(merged, OmegaConf.create(storage.read_text(layer)))
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        files = [p for p in paths if not isinstance(p, Mapping)]
        where = f" in {files[-1]}" if files else ""
        key = getattr(err, "full_key", None)
        message = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"bad {schema.__name__}{where}: " + (f"{key}: " if key else "") + message) from None
    except ValueError as err:  # a dataclass __post_init__ check
        raise ConfigError(f"bad {schema.__name__}: {err}") from None


def config_from_dict(schema: type[T], values: dict) -> T:
    """Rebuild a config from `dataclasses.asdict` output (e.g. after crossing a process boundary)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))  # type: ignore[return-value]


def save_config(config: object, path: str | Path) -> str | Path:
    """Write the resolved config as YAML to a file or a URI; returns the path."""
    from aemg_dist import storage

    if not is_dataclass(config):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    storage.write_text(path, OmegaConf.to_yaml(OmegaConf.structured(config)))
    return path
