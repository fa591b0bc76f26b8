"""Inference checkpoints: the weights as safetensors and the config as JSON, loaded without pickle.

    OUT/model.safetensors  every tensor of the model's state_dict (parameters and buffers: the
                           codebook and the Fourier frequencies are part of the model)
    OUT/config.json        {"format_version": 1, "model": asdict(ModelConfig)}

Training checkpoints (optimizer state, DeepSpeed shards) are the trainer's business; this is the
format for evaluation and users, readable by any safetensors implementation.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .objectives import AEMGModel
from .transformer import ModelConfig

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def export_inference(model: AEMGModel, cfg: ModelConfig, out_dir: str | Path) -> Path:
    """Write OUT/model.safetensors and OUT/config.json for `model` built from `cfg`; returns OUT."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage or are not contiguous: save independent copies
    state = {name: t.detach().cpu().contiguous().clone() for name, t in model.state_dict().items()}
    _check_state(_expected_state(cfg), state, "the model given to export_inference")
    save_file(state, out_dir / WEIGHTS_FILE, metadata={"format_version": str(FORMAT_VERSION)})
    (out_dir / CONFIG_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, "model": asdict(cfg)}, indent=2))
    return out_dir


def load_inference(out_dir: str | Path, device: torch.device | str = "cpu") -> AEMGModel:
    """Rebuild the model of an `export_inference` directory, in eval mode, on `device`.

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for an unknown
    format version, a bad config, or weights whose names or shapes do not fit the config.
    """
    out_dir = Path(out_dir)
    config_path, weights_path = out_dir / CONFIG_FILE, out_dir / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: not an inference checkpoint written by export_inference")
    try:
        meta = json.loads(config_path.read_text())
    except ValueError as err:
        raise ValueError(f"{config_path}: not valid JSON: {err}") from None
    _check_version(meta.get("format_version"), config_path)
    with safe_open(str(weights_path), framework="pt") as f:
        _check_version((f.metadata() or {}).get("format_version"), weights_path)
    try:
        cfg = ModelConfig(**meta["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: bad model config: {err}") from None
    state = load_file(str(weights_path), device=str(device))
    _check_state(_expected_state(cfg), state, str(weights_path))
    model = AEMGModel(cfg).to(device)
    model.load_state_dict(state)
    return model.eval()


def _check_version(version: object, path: Path) -> None:
    if str(version) != str(FORMAT_VERSION):  # an int in the JSON, a string in the safetensors metadata
        raise ValueError(f"{path}: format_version {version!r} is not supported (this code reads {FORMAT_VERSION})")


def _expected_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The state_dict of AEMGModel(cfg) on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return AEMGModel(cfg).state_dict()


def _check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [f"{name} {tuple(state[name].shape)} (config expects {tuple(t.shape)})"
                  for name, t in expected.items() if name in state and state[name].shape != t.shape]
    if missing or unexpected or mismatched:
        raise ValueError(f"{source} does not fit the model config: missing {missing}, unexpected {unexpected}, "
                         f"wrong shapes {mismatched}")
