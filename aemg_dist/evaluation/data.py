"""The labeled windows every method is scored on: token rows and the raw EMG of the same spans.

`aemg tokenize` with `windows.kind=labeled` writes one token row per classification window
(key, start, stop, label, rep, tokens). `DatasetWindows` holds the rows of one dataset and gives
each method its view of the *same* windows: the AEMG models read the tokens, the raw-signal
baselines (TD+LDA, CNN, Transformer, SimCLR, MAE) read `raw`, the harmonized samples
[start, stop) of each row from the corpus. So every method sees identical windows and folds.
It also keeps what `heldout.py` needs to rebuild a held-out subject's windows from allowed
statistics: each recording's stored normalization, electrodes and rate, and the tokenizer settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aemg_dist import storage
from aemg_dist.artifacts import (TOKENIZE_CONFIG, TokenizeConfig, load_tokenize_config, read_token_table,
                                 table_to_windows)
from aemg_dist.tokens import WindowTokens
from preprocessing.corpus import Corpus
from preprocessing.harmonize import HarmonizeConfig


@dataclass(frozen=True)
class RecordingInfo:
    """What rebuilding a recording's windows needs from its corpus attributes."""

    center: np.ndarray  # (C,) stored normalization, source units
    scale: np.ndarray  # (C,)
    coords: np.ndarray  # (C, 3) canonical electrode coordinates
    source_fs: float
    usable: np.ndarray  # (C,) bool: not marked dead (mostly missing in the source)

    @classmethod
    def from_attrs(cls, attrs: dict) -> "RecordingInfo":
        norm = attrs["normalization"]
        return cls(center=np.asarray(norm["center"], dtype=np.float64), scale=np.asarray(norm["scale"], dtype=np.float64),
                   coords=np.asarray(attrs["canonical_coordinates"], dtype=np.float32),
                   source_fs=float(attrs["source_fs"]),
                   usable=np.array(["dead" not in flags for flags in attrs["channel_quality"]], dtype=bool))


@dataclass
class DatasetWindows:
    """The labeled windows (label >= 0) of one dataset, in token-table order."""

    dataset: str
    table: pa.Table
    corpus_path: str
    tokenize_config: TokenizeConfig = field(default_factory=TokenizeConfig)  # how the rows were tokenized
    class_labels: np.ndarray = field(init=False)  # (K,) the dataset's label ids, sorted
    y: np.ndarray = field(init=False)  # (N,) class index 0..K-1 of each window
    keys: np.ndarray = field(init=False)  # (N,) recording key of each window
    starts: np.ndarray = field(init=False)  # (N,) first sample of each window in its recording
    stops: np.ndarray = field(init=False)  # (N,) one past its last sample
    _recordings: dict[str, RecordingInfo] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.table.num_rows == 0:
            raise ValueError(f"no labeled windows of dataset {self.dataset!r}")
        labels = self.table.column("label").to_numpy()
        self.class_labels, self.y = np.unique(labels, return_inverse=True)
        if self.class_labels.size < 2:
            raise ValueError(f"dataset {self.dataset!r} has a single label; nothing to classify")
        self.keys = np.asarray(self.table.column("key").to_pylist())
        self.starts = self.table.column("start").to_numpy()
        self.stops = self.table.column("stop").to_numpy()

    @property
    def fs(self) -> float:
        rates = np.unique(self.table.column("fs").to_numpy())
        if rates.size != 1:
            raise ValueError(f"dataset {self.dataset!r}: windows at several rates {rates}")
        return float(rates[0])

    @cached_property
    def corpus(self) -> Corpus:
        return Corpus(self.corpus_path)

    @cached_property
    def flat_tolerance(self) -> float:
        """Below this spread (source units) a channel is flat: the corpus's own threshold."""
        return float(self.corpus.harmonize_config().get("flat_tolerance", HarmonizeConfig.flat_tolerance))

    def recording(self, key: str) -> RecordingInfo:
        if key not in self._recordings:
            self._recordings[key] = RecordingInfo.from_attrs(self.corpus.attrs(key))
        return self._recordings[key]

    def source_units(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), T, C) float32: windows idx back in source units (the corpus's z-score undone)."""
        out = self.raw[idx]  # fancy indexing copies
        keys = self.keys[idx]
        for key in np.unique(keys):
            info = self.recording(key)
            rows = keys == key
            out[rows] = out[rows] * info.scale.astype(np.float32) + info.center.astype(np.float32)
        return out

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def class_names(self) -> list[str]:
        names = dict(zip(self.table.column("label").to_pylist(), self.table.column("label_name").to_pylist()))
        return [names[int(c)] or str(int(c)) for c in self.class_labels]

    @cached_property
    def tokens(self) -> list[WindowTokens]:
        return table_to_windows(self.table)

    @cached_property
    def raw(self) -> np.ndarray:
        """(N, T, C) float32 harmonized EMG of every window, read once per recording."""
        corpus = self.corpus
        key, start, stop = self.keys, self.starts, self.stops
        lengths = np.unique(stop - start)
        if lengths.size != 1:
            raise ValueError(f"dataset {self.dataset!r}: labeled windows of different lengths {lengths[:5]}; "
                             "tokenize with windows.kind=labeled (fixed-length windows)")
        length = int(lengths[0])
        out: np.ndarray | None = None
        for k in np.unique(key):
            rows = np.flatnonzero(key == k)
            first, last = int(start[rows].min()), int(stop[rows].max())
            samples = corpus.read(str(k), first, last)
            if out is None:
                out = np.empty((len(key), length, samples.shape[1]), dtype=np.float32)
            elif samples.shape[1] != out.shape[2]:
                raise ValueError(f"dataset {self.dataset!r}: recording {k} has {samples.shape[1]} channels, "
                                 f"others {out.shape[2]}; raw-signal baselines need one layout per dataset")
            out[rows] = samples[(start[rows] - first)[:, None] + np.arange(length)]
        return out


def load_labeled_windows(tokens: str | Path, corpus_path: str | Path,
                         datasets: list[str] | None = None) -> dict[str, DatasetWindows]:
    """Labeled windows per dataset from a `windows.kind=labeled` token folder."""
    table = read_token_table(tokens)
    settings = load_tokenize_config(storage.join(storage.absolute(tokens), TOKENIZE_CONFIG))
    table = table.filter(pc.greater_equal(table.column("label"), 0))
    present = sorted(set(table.column("dataset").to_pylist()))
    chosen = datasets or present
    missing = sorted(set(chosen) - set(present))
    if missing:
        raise ValueError(f"{tokens} has no labeled windows of {missing}; it holds {present}")
    return {name: DatasetWindows(name, table.filter(pc.equal(table.column("dataset"), name)), str(corpus_path),
                                 settings) for name in chosen}
