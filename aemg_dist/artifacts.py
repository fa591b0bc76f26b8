"""The contracts between stages: what one stage writes and the next reads, in one Ray-free module.

Stages talk through files (DESIGN.md), so the files' shapes are the interfaces; they live here rather than inside
the stage that writes them, so a reader imports a contract, not another stage (nor Ray through it).

- **Token shards** (`aemg tokenize` with a `TokenizeConfig`, saved as tokenize.yaml -> pretraining, evaluation, prototypes): Parquet part files, one row per window:
  identifiers (key, dataset, subject, session, start, stop, fs, label, label_name, rep, n_tokens) and one list column
  per `TOKEN_FIELDS` entry (`windows_to_table` / `table_to_windows`).
- **tokens.json**: written last by `aemg tokenize` and marks the folder complete: the part files with their row and
  token counts, the recordings, the feature names and the tokenizer settings (`write_tokens_manifest` /
  `read_tokens_manifest`). Pretraining sizes the model's input from its feature names.
- **The pretraining run folder** (`run.out`): the resolved config (`RUN_CONFIG`), `RUN_METRICS`, the exported
  inference checkpoint (`RUN_EXPORT`), the checkpoints (`LOCAL_CHECKPOINT` without Ray, Ray Train's under `RAY_RUN`)
  and `RUN_WORKERS` (node, process and start step of each rank).
- **Model presets**: configs/model/<name>.yaml among the shipped configs (`config.shipped_configs`).
"""

from __future__ import annotations

import csv
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from aemg_dist import storage
from aemg_dist.config import ConfigError, check_ranges, load_config, shipped_configs
from aemg_dist.events import EventConfig
from aemg_dist.tokens import TokenConfig, WindowTokens
from aemg_dist.windows import WindowConfig
from preprocessing.errors import DataError

# ---------------------------------------------------------------- token shards

TOKENS_MANIFEST = "tokens.json"
TOKENS_FORMAT = "aemg-tokens/1"
TOKENIZE_CONFIG = "tokenize.yaml"  # the resolved TokenizeConfig, written first: a re-run finishes the part files


@dataclass(frozen=True)
class TokenizeConfig:
    """Everything that decides the tokens; saved next to them."""

    events: EventConfig = field(default_factory=EventConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    shard_s: float = 60.0  # time range read at once: one block of window rows
    task_s: float = 600.0  # EMG seconds one Ray Data read task covers (a run of shards); fewer, larger
    #                        tasks amortize Ray's per-task cost, which dominates on short recordings

    def __post_init__(self) -> None:
        check_ranges(self, shard_s="(0, inf)", task_s="(0, inf)")


# The value a token setting had before it existed, for the settings whose default has changed since: token folders
# (and decoders) written before the setting was added were made with it. Newer files hold every setting, so this
# never overrides what a file says.
TOKENS_BEFORE_THE_SETTING = {"window_summary": False}


def load_tokenize_config(*layers: str | Path | Mapping[str, Any]) -> TokenizeConfig:
    """The TokenizeConfig of tokenize.yaml files or recorded mappings (later ones win); a setting an older one lacks
    takes its value from TOKENS_BEFORE_THE_SETTING, not today's default."""
    return load_config(TokenizeConfig, [{"tokens": TOKENS_BEFORE_THE_SETTING}, *layers])


def recorded_token_settings(tokens: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded mapping of TokenConfig fields completed with TOKENS_BEFORE_THE_SETTING for the settings it
    predates (a file written before a setting existed was made with its old value)."""
    return {**TOKENS_BEFORE_THE_SETTING, **tokens}


# per-token arrays of WindowTokens and their stored dtypes
TOKEN_FIELDS = {"features": np.float32, "coords": np.float32, "onset_s": np.float32, "duration_s": np.float32,
                "rank": np.int16, "group": np.int16, "channel": np.int16, "active": np.bool_}


def windows_to_table(columns: dict[str, Any], tokens: Sequence[WindowTokens]) -> pa.Table:
    """Token rows: the per-window identifier `columns` (one value per window) and the windows' tokens as one list
    column per TOKEN_FIELDS entry (per-token vectors as fixed-size lists)."""
    columns = {**columns, "n_tokens": np.array([t.n_tokens for t in tokens], dtype=np.int32)}
    offsets = pa.array(np.concatenate([[0], np.cumsum(columns["n_tokens"])]).astype(np.int32))
    for name, dtype in TOKEN_FIELDS.items():
        flat = np.concatenate([getattr(t, name) for t in tokens]) if tokens else np.zeros(0)
        values = pa.array(flat.reshape(-1).astype(dtype))
        if flat.ndim == 2:  # per-token vectors (features, coords) keep their width
            values = pa.FixedSizeListArray.from_arrays(values, flat.shape[1])
        columns[name] = pa.ListArray.from_arrays(offsets, values)
    return pa.table(columns)


def table_to_windows(table: pa.Table) -> list[WindowTokens]:
    """Token rows back to WindowTokens (what the model's batches are collated from)."""
    columns = {}
    for name, dtype in TOKEN_FIELDS.items():
        column = table.column(name).combine_chunks()
        values = column.values
        width = values.type.list_size if pa.types.is_fixed_size_list(values.type) else None
        flat = (values.values if width else values).to_numpy(zero_copy_only=False)
        flat = flat.astype(np.int64 if dtype == np.int16 else dtype)
        columns[name] = (flat.reshape(-1, width) if width else flat, column.offsets.to_numpy())
    return [WindowTokens(**{name: flat[offsets[i]:offsets[i + 1]] for name, (flat, offsets) in columns.items()})
            for i in range(table.num_rows)]


def read_part(path: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One part file (a path or URI), whole or these columns."""
    fs, inner = storage.filesystem(path)
    return pq.read_table(inner, columns=None if columns is None else list(columns), filesystem=fs)


def write_part(out: str, table: pa.Table) -> str:
    """Write token rows as one part file named after its first window; returns its path.

    The name is deterministic (the same rows always get the same name) and unique (a window is
    in exactly one file), and the file appears only once complete, so a re-run can trust every
    part file it finds."""
    key, start = table.column("key")[0].as_py(), table.column("start")[0].as_py()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key)
    path = storage.join(out, f"part-{slug}-{zlib.crc32(key.encode()):08x}-{start:012d}.parquet")
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(path, buffer.getvalue())
    return path


def read_token_table(folder: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All token rows of a `tokenize` output folder (a path or URI) as one table (in file order)."""
    files = storage.listdir(folder, ".parquet")
    if not files:
        raise FileNotFoundError(f"{folder} holds no token shards (*.parquet); run `aemg tokenize` first")
    return pa.concat_tables([read_part(f, columns) for f in files])


def write_tokens_manifest(out: str, feature_names: list[str], config: dict[str, Any], recordings: list[str],
                          files: list[dict[str, Any]]) -> dict[str, Any]:
    """Write OUT/tokens.json (`files`: {"path" (relative to OUT), "rows", "tokens"} per part file), last, as it
    marks the output complete; returns the manifest."""
    manifest = {
        "format": TOKENS_FORMAT,
        "feature_names": feature_names,
        "config": config,
        "recordings": sorted(recordings),
        "files": files,
        "windows": sum(f["rows"] for f in files),
        "tokens": sum(f["tokens"] for f in files),
    }
    storage.write_text(storage.join(out, TOKENS_MANIFEST), json.dumps(manifest, indent=1))
    return manifest


def read_tokens_manifest(folder: str | Path, what: str) -> dict[str, Any]:
    """tokens.json of a finished `aemg tokenize` output (written last): FileNotFoundError naming the folder when it
    is missing, so nothing trains on the shards of an interrupted tokenization; DataError when it is damaged."""
    storage.check_scheme(folder)
    path = storage.join(folder, TOKENS_MANIFEST)
    if not storage.exists(path):
        state = "an unfinished tokenization" if storage.listdir(folder, ".parquet") else "no tokens"
        raise FileNotFoundError(f"{what}={folder} holds {state} (no {TOKENS_MANIFEST}); run `aemg tokenize` "
                                "(again, to finish it) first")
    try:
        manifest = json.loads(storage.read_text(path))
        fine = (manifest.get("format") == TOKENS_FORMAT and isinstance(manifest.get("config"), dict)
                and all(isinstance(manifest.get(k), list) and all(isinstance(v, str) for v in manifest[k])
                        for k in ("feature_names", "recordings")))
    except (ValueError, AttributeError):  # not JSON (JSONDecodeError, UnicodeDecodeError), or not an object
        fine = False
    if not fine:
        raise DataError(path, f"not a manifest of `aemg tokenize` (format {TOKENS_FORMAT}); tokenize again")
    return manifest


# ---------------------------------------------------------------- the pretraining run folder

RUN_CONFIG = "config.yaml"  # the resolved PretrainConfig; a run folder that holds one is continued
RUN_METRICS = "metrics.csv"  # one row per logged step, written by rank 0
RUN_EXPORT = "export"  # the inference checkpoint (model.safetensors + config.json)
LOCAL_CHECKPOINT = "local_checkpoint"  # the --no-ray loop's checkpoint
RAY_RUN = "ray"  # Ray Train's run (its checkpoints) under run.out
RUN_WORKERS = "workers"  # rank-R.json: node, process and start step of each rank


def run_export(path: str | Path) -> Path:
    """The inference checkpoint of a (local) run folder, or `path` itself when it is one (holds model.safetensors)."""
    path = Path(path)
    return path if (path / "model.safetensors").is_file() else path / RUN_EXPORT


def last_metrics(run: str | Path) -> dict[str, float]:
    """The last row of a (local) run folder's metrics.csv ({} before the first one)."""
    path = Path(run) / RUN_METRICS
    if not path.exists():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)} if rows else {}


# ---------------------------------------------------------------- model presets


def model_preset_names() -> list[str]:
    """The model presets, by name (configs/model/<name>.yaml)."""
    return sorted(p.stem for p in (shipped_configs() / "model").glob("*.yaml"))


def model_preset(name: str) -> dict[str, Any]:
    """The `model.*` settings of a preset (ConfigError naming the presets there are for an unknown one)."""
    path = shipped_configs() / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown model preset {name!r}; choose one of {model_preset_names()}")
    return yaml.safe_load(path.read_text()) or {}
