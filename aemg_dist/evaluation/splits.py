"""Development and test subjects: where choices are made, and where numbers are reported.

A splits file (YAML) lists, per dataset, the held-out units that are **development** folds: subjects,
or sessions for a dataset evaluated leave-one-session-out (MultiDay's days). Every other fold of a
listed dataset is a **test** fold. Every choice (a sweep's winner, a fine-tuning recipe, a threshold,
a number of steps) is made on development folds; reported numbers come from test folds only.

    # configs/splits/shared.yaml
    3dc: [Participant2, Participant5]
    multiday: [day25, day97]

`make_splits` draws a fixed share of each dataset's units with a seeded generator (natural order
first, so the draw does not depend on how a listing was sorted); `aemg splits` writes the file, once,
and the file is then the record: later runs read it and never draw again.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from aemg_dist import storage
from aemg_dist.config import ConfigError, read_yaml

ROLES = ("development", "test", "all")


def natural_key(text: str) -> list:
    """Sort key that orders s2 before s10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def make_splits(units: dict[str, list[str]], development_fraction: float = 0.25, seed: int = 0) -> dict[str, list[str]]:
    """{dataset: development units}: round(fraction * n) of each dataset's n units (at least 1, at most n - 1),
    drawn with a generator seeded by (seed, dataset)."""
    if not 0 < development_fraction < 1:
        raise ValueError(f"development_fraction must be in (0, 1), got {development_fraction}")
    out = {}
    for dataset in sorted(units):
        members = sorted(set(units[dataset]), key=natural_key)
        if len(members) < 2:
            raise ValueError(f"dataset {dataset!r} has {len(members)} held-out unit(s); a split needs at least 2")
        n_dev = int(np.clip(round(development_fraction * len(members)), 1, len(members) - 1))
        rng = np.random.default_rng([seed, *dataset.encode()])
        chosen = rng.choice(len(members), size=n_dev, replace=False)
        out[dataset] = sorted((members[i] for i in chosen), key=natural_key)
    return out


def write_splits(splits: dict[str, list[str]], path: str | Path, header: str = "") -> None:
    text = yaml.safe_dump({k: list(v) for k, v in splits.items()}, sort_keys=True, default_flow_style=None)
    storage.write_text(str(path), (header + "\n" if header else "") + text)


def load_splits(path: str) -> dict[str, frozenset[str]]:
    """{dataset: development units} from a splits file; ConfigError naming the file when it is malformed."""
    if not storage.exists(path):
        raise ConfigError(f"splits file {path} does not exist")
    try:
        payload = read_yaml(storage.read_text(path), f"splits file {path}") or {}
    except UnicodeDecodeError:
        raise ConfigError(f"splits file {path}: not a YAML file") from None
    if not isinstance(payload, dict) or not all(isinstance(v, list) for v in payload.values()):
        raise ConfigError(f"splits file {path}: expected a mapping of dataset -> list of development subjects")
    return {str(k): frozenset(map(str, v)) for k, v in payload.items()}


def fold_role(splits: dict[str, frozenset[str]], dataset: str, held_out: str) -> str:
    """"development" or "test" for the fold that holds out `held_out` of `dataset`."""
    if dataset not in splits:
        raise ConfigError(f"the splits file has no entry for dataset {dataset!r} (list its development subjects, "
                          "or [] to make every subject a test subject)")
    return "development" if held_out in splits[dataset] else "test"
