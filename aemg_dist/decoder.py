"""A personal decoder: one self-contained model folder that turns a person's raw EMG into gesture decisions.

    OUT/model.safetensors   the fine-tuned classifier (pretrained encoder + linear head), every tensor
    OUT/config.json         {"format": "aemg-decoder/1", ...}: everything between raw samples and a label

`aemg finetune` writes it (finetune.py), `aemg predict` reads it (predict.py, stream.py). The folder holds
what a recording needs on its way in, so nothing else has to travel with it: the harmonization settings
(band edges, notch lines, corpus rate), the device (source rate, electrode coordinates, units), the
person's statistics from their calibration windows only (per-channel median and robust scale in source
units, the event detector's noise floor, usable channels: heldout.py's strict statistics), the event and
token settings the encoder was pretrained with, the window length and hop, and the class ids and names.
Weights are safetensors and the rest JSON: loading runs no pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aemg_dist.artifacts import recorded_token_settings
from aemg_dist.config import config_from_dict
from aemg_dist.evaluation.classifiers import AEMGClassifier
from aemg_dist.events import EventConfig
from aemg_dist.model import AEMGModel, ModelConfig, batch_to_torch
from aemg_dist.tokens import TokenBatch, TokenConfig, tokenize_window
from preprocessing.harmonize import HarmonizeConfig

DECODER_FORMAT = "aemg-decoder/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class DecoderConfig:
    """What config.json holds (see the module docstring); arrays are per channel of the person's device."""

    model: ModelConfig
    class_ids: list[int]
    class_names: list[str]
    source_fs: float  # the device's rate
    coords: list[list[float]]  # (C, 3) canonical electrode coordinates
    center: list[float]  # (C,) median of the calibration samples, band-passed source units
    scale: list[float]  # (C,) 1.4826 * MAD of the same
    floor: list[float]  # (C,) noise floor of the renormalized calibration envelope
    channel_ok: list[bool]  # (C,)
    notch_hz: list[float] = field(default_factory=list)  # mains lines of the source (declared by its manifest)
    harmonize: HarmonizeConfig = field(default_factory=HarmonizeConfig)
    events: EventConfig = field(default_factory=EventConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)
    length_s: float = 0.5  # one decision reads this much signal ...
    hop_s: float = 0.25  # ... every hop
    max_tokens: int = 256
    units: str = ""
    electrodes: dict[str, Any] = field(default_factory=dict)  # the layout as the corpus stores it
    provenance: dict[str, Any] = field(default_factory=dict)  # pretrained model, subject, recipe, held-out scores

    @property
    def n_channels(self) -> int:
        return len(self.center)

    @property
    def fs(self) -> float:
        """The rate windows are tokenized at (the corpus rate the encoder was pretrained on)."""
        return float(self.harmonize.target_fs)

    def to_json(self) -> dict[str, Any]:
        return {"format": DECODER_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, values: dict[str, Any], where: str) -> "DecoderConfig":
        if values.get("format") != DECODER_FORMAT:
            raise ValueError(f"{where}: format {values.get('format')!r} is not {DECODER_FORMAT!r}; "
                             "not a model folder written by `aemg finetune`")
        values = {k: v for k, v in values.items() if k != "format"}
        try:
            parts = {"model": ModelConfig(**values.pop("model")),
                     "harmonize": config_from_dict(HarmonizeConfig, values.pop("harmonize")),
                     "events": config_from_dict(EventConfig, values.pop("events")),
                     "tokens": config_from_dict(TokenConfig, recorded_token_settings(values.pop("tokens")))}
            config = cls(**parts, **values)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: bad decoder config ({err})") from None
        sizes = {len(config.coords), len(config.scale), len(config.floor), len(config.channel_ok)}
        if sizes != {config.n_channels} or len(config.class_ids) != len(config.class_names):
            raise ValueError(f"{where}: per-channel or per-class entries of different lengths")
        return config


class Decoder:
    """A loaded personal decoder: normalized windows at the corpus rate in, class probabilities out."""

    def __init__(self, model: AEMGClassifier, config: DecoderConfig):
        self.model = model.eval()
        self.config = config
        self._coords = np.asarray(config.coords, dtype=np.float32)
        self._floor = np.asarray(config.floor, dtype=np.float32)
        self._channel_ok = np.asarray(config.channel_ok, dtype=bool)

    def normalize(self, source_units: np.ndarray) -> np.ndarray:
        """Band-passed samples in source units -> z-scores with the person's calibration statistics."""
        center = np.asarray(self.config.center)
        scale = np.asarray(self.config.scale)
        return ((source_units - center) / scale).astype(np.float32)

    @torch.no_grad()
    def probabilities(self, windows: list[np.ndarray], source_fs: float) -> np.ndarray:
        """(W, K) class probabilities of normalized windows (each (T, C) at the corpus rate)."""
        cfg = self.config
        tokens = [tokenize_window(w, cfg.fs, self._coords, source_fs, self._channel_ok, cfg.events, cfg.tokens,
                                  floor=self._floor) for w in windows]
        batch = batch_to_torch(TokenBatch.collate(tokens, max_tokens=cfg.max_tokens))
        return torch.softmax(self.model(batch), dim=-1).numpy()

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        state = {name: t.detach().cpu().contiguous().clone() for name, t in self.model.state_dict().items()}
        save_file(state, out / WEIGHTS_FILE, metadata={"format": DECODER_FORMAT})
        (out / CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=1))
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "Decoder":
        """The decoder of a model folder; FileNotFoundError / ValueError name the file at fault."""
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist: not a model folder written by `aemg finetune`")
        try:
            values = json.loads(config_path.read_text())
        except ValueError as err:
            raise ValueError(f"{config_path}: not valid JSON ({err})") from None
        config = DecoderConfig.from_json(values, str(config_path))
        model = AEMGClassifier(AEMGModel(config.model), len(config.class_ids))
        try:
            model.load_state_dict(load_file(str(weights_path)))
        except (RuntimeError, OSError, ValueError, SafetensorError) as err:  # wrong tensors or shapes, a bad file
            raise ValueError(f"{weights_path}: weights do not fit {config_path} ({str(err).splitlines()[0]})") from None
        return cls(model, config)
