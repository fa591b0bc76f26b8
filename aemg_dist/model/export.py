"""Inference checkpoints: the weights as safetensors and the config as JSON, loaded without pickle.

    OUT/model.safetensors  every tensor of the model's state_dict (parameters and buffers: the
                           codebook and the Fourier frequencies are part of the model)
    OUT/config.json        {"format_version": 1, "model": asdict(ModelConfig), "tokenize": the settings of the
                           tokens it was pretrained on (optional; exports before it lack it)}

Training checkpoints (optimizer state, DeepSpeed shards) are the trainer's business; this is the
format for evaluation and users, readable by any safetensors implementation.

A checkpoint is an input like any other file, and may be damaged or hostile: `check_inference` reads
config.json (at most MAX_CONFIG_BYTES) and the safetensors header (at most a size that follows from the
config) and checks them against each other before anything is allocated, so a config that asks for a
billion layers, or random bytes in place of the weights, is one CheckpointError naming the file.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aemg_dist import storage
from aemg_dist.config import ConfigError, load_config

from .objectives import AEMGModel
from .transformer import ModelConfig

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 64 * 1024  # an exported config.json is ~1.5 KB
HEADER_BYTES_PER_TENSOR = 256  # a header entry is ~100 bytes (name, dtype, shape, offsets)
DTYPES = {"F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
          "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
          "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1)}


class CheckpointError(ValueError):
    """An inference checkpoint cannot be used as it is: the message names the file and the problem."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the safetensors header describes it."""

    dtype: torch.dtype
    shape: tuple[int, ...]


def export_inference(model: AEMGModel, cfg: ModelConfig, out_dir: str | Path,
                     tokenize: Mapping[str, Any] | None = None) -> Path:
    """Write OUT/model.safetensors and OUT/config.json for `model` built from `cfg`, with the token settings it was
    pretrained on when given (so the export alone says how to tokenize for it); returns OUT."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage or are not contiguous: save independent copies
    state = {name: t.detach().cpu().contiguous().clone() for name, t in model.state_dict().items()}
    _check_state(_expected_state(cfg), {k: TensorEntry(t.dtype, tuple(t.shape)) for k, t in state.items()},
                 "the model given to export_inference")
    save_file(state, out_dir / WEIGHTS_FILE, metadata={"format_version": str(FORMAT_VERSION)})
    meta = {"format_version": FORMAT_VERSION, "model": asdict(cfg)}
    if tokenize is not None:
        meta["tokenize"] = dict(tokenize)
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return out_dir


def read_tokenize_settings(out_dir: str | Path) -> dict[str, Any] | None:
    """The token settings an export recorded (a mapping of TokenizeConfig fields), None for an export without them;
    the config is validated as by read_model_config."""
    path, meta, _ = _read_config(out_dir)
    settings = meta.get("tokenize")
    if settings is not None and not isinstance(settings, dict):
        raise CheckpointError(f"{path}: tokenize is {_shown(settings)}, not an object")
    return settings


def read_model_config(out_dir: str | Path) -> ModelConfig:
    """The ModelConfig of an export folder (a path or URI), validated: config.json must be small, JSON, of this
    format version, and a ModelConfig within its ranges. FileNotFoundError when it is missing, CheckpointError
    naming the file otherwise."""
    return _read_config(out_dir)[2]


def _read_config(out_dir: str | Path) -> tuple[str, dict[str, Any], ModelConfig]:
    """config.json's path, its parsed object and its validated ModelConfig, from one read."""
    path = storage.join(out_dir, CONFIG_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} does not exist: not an inference checkpoint written by export_inference")
    if storage.size(path) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {storage.size(path)} bytes is not an exported config (at most "
                              f"{MAX_CONFIG_BYTES})")
    try:
        meta = json.loads(storage.read_text(path))
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: not valid JSON ({str(err).splitlines()[0][:200]})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{path}: expected an object with format_version and a model object, got "
                              f"{_shown(meta)}")
    _check_version(meta.get("format_version"), path)
    try:
        return path, meta, load_config(ModelConfig, [meta["model"]])
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def check_inference(out_dir: str | Path, fits: ModelConfig | None = None) -> ModelConfig:
    """Validate an export folder (a path or URI) without loading its weights: its config, and that the
    safetensors header is well formed, of this format version and holds exactly the tensors (names, shapes,
    dtypes) the config's model has, and also those of the model `fits` describes when given (a run that starts
    from the export). Returns the config."""
    cfg = read_model_config(out_dir)
    expected = _expected_state(cfg)
    path = storage.join(out_dir, WEIGHTS_FILE)
    metadata, entries = read_header(path, HEADER_BYTES_PER_TENSOR * len(expected) + 4096)
    _check_version(metadata.get("format_version"), path)
    _check_state(expected, entries, path)
    if fits is not None:
        _check_state(_expected_state(fits), entries, f"{path} (the model to start from)")
    return cfg


def load_inference(out_dir: str | Path, device: torch.device | str = "cpu") -> AEMGModel:
    """Rebuild the model of an `export_inference` directory, in eval mode, on `device`.

    Raises FileNotFoundError for a missing file and CheckpointError (a ValueError), naming the file, for an
    unknown format version, a bad config, a damaged header, weights whose names, shapes or dtypes do not fit
    the config, or non-finite weights; all before the model is built.
    """
    out_dir = Path(out_dir)
    cfg = check_inference(out_dir)
    weights_path = out_dir / WEIGHTS_FILE
    try:
        state = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as err:  # the header passed: the data is cut short or unreadable
        raise CheckpointError(f"{weights_path}: cannot read the weights ({str(err).splitlines()[0]})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{weights_path}: tensor {name} holds NaN or Inf values")
    model = AEMGModel(cfg).to(device)
    model.load_state_dict(state)
    return model.eval()


def read_header(path: str | Path, max_bytes: int) -> tuple[dict[str, str], dict[str, TensorEntry]]:
    """(metadata, {name: entry}) of a safetensors file (a path or URI), reading at most 8 + max_bytes bytes.

    Checks what the format promises: the 8-byte length, a JSON object of entries with a known dtype, a shape
    of non-negative integers and data offsets that lie in the file, match the shape and tile the data without
    overlap. CheckpointError naming the file otherwise."""
    fs, inner = storage.filesystem(path)
    if not fs.exists(inner):
        raise FileNotFoundError(f"{path} does not exist: not an inference checkpoint written by export_inference")
    size = int(fs.size(inner))
    with fs.open(inner, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file")
        length = struct.unpack("<Q", prefix)[0]
        if length > min(max_bytes, size - 8):
            raise CheckpointError(f"{path}: not a safetensors file of this model (a header of {length} bytes in a "
                                  f"file of {size}; the model's needs at most {max_bytes})")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON (a damaged file?)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is {_shown(header)}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: the safetensors metadata is {_shown(metadata)}, not an object")
    entries, spans = {}, []
    for name, entry in header.items():
        dtype, shape, span = _entry(entry)
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed entry {_shown(entry)}")
        if span[1] - span[0] != math.prod(shape) * DTYPES[dtype][1]:
            raise CheckpointError(f"{path}: tensor {name!r} of shape {shape} {dtype} does not fill its data offsets "
                                  f"{span}")
        entries[name] = TensorEntry(DTYPES[dtype][0], shape)
        spans.append(span)
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise CheckpointError(f"{path}: the tensors' data offsets overlap or leave gaps (a damaged file?)")
        position = end
    if position != size - 8 - length:
        raise CheckpointError(f"{path}: the header describes {position} bytes of data but the file holds "
                              f"{size - 8 - length} (truncated or damaged)")
    return metadata, entries


def _entry(entry: Any) -> tuple[str | None, tuple[int, ...], tuple[int, int]]:
    """(dtype, shape, data offsets) of a header entry, dtype None when it is malformed."""
    malformed = (None, (), (0, 0))
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
        return malformed
    shape, span = entry.get("shape"), entry.get("data_offsets")
    integers = lambda v: isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                     for i in v)
    if not integers(shape) or not integers(span) or len(span) != 2 or span[0] > span[1]:
        return malformed
    return entry["dtype"], tuple(shape), (span[0], span[1])


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_version(version: object, path: str | Path) -> None:
    if str(version) != str(FORMAT_VERSION):  # an int in the JSON, a string in the safetensors metadata
        raise CheckpointError(f"{path}: format_version {_shown(version)} is not supported (this code reads "
                              f"{FORMAT_VERSION})")


def _expected_state(cfg: ModelConfig) -> dict[str, TensorEntry]:
    """Names, shapes and dtypes of AEMGModel(cfg)'s state_dict, built on the meta device: no memory."""
    with torch.device("meta"):
        return {k: TensorEntry(t.dtype, tuple(t.shape)) for k, t in AEMGModel(cfg).state_dict().items()}


def _check_state(expected: dict[str, TensorEntry], state: dict[str, TensorEntry], source: str | Path) -> None:
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [f"{name} {state[name].shape} (config expects {e.shape})"
                  for name, e in expected.items() if name in state and state[name].shape != e.shape]
    # weights may be saved in any float precision (bf16 training exports bf16); counters and flags exactly as built
    retyped = [f"{name} {state[name].dtype} (expected {e.dtype})" for name, e in expected.items()
               if name in state and state[name].dtype != e.dtype
               and not (state[name].dtype.is_floating_point and e.dtype.is_floating_point)]
    if missing or unexpected or mismatched or retyped:
        shown = lambda items: items[:3] + ([f"... {len(items) - 3} more"] if len(items) > 3 else [])
        raise CheckpointError(f"{source} does not fit the model config: missing {shown(missing)}, unexpected "
                              f"{shown(unexpected)}, wrong shapes {shown(mismatched)}, wrong dtypes {shown(retyped)}")
