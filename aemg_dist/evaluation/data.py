"""The labeled windows every method is scored on: token rows and the raw EMG of the same spans.

`aemg tokenize` with `windows.kind=labeled` writes one token row per classification window
(key, start, stop, label, rep, tokens). `DatasetWindows` holds the rows of one dataset and gives
each method its view of the *same* windows: the AEMG models read the tokens, the raw-signal
baselines (TD+LDA, CNN, Transformer, SimCLR, MAE) read `raw`, the harmonized samples
[start, stop) of each row from the corpus. So every method sees identical windows and folds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aemg_dist.data import read_token_table, table_to_windows
from aemg_dist.tokens import TokenBatch, WindowTokens
from preprocessing.corpus import Corpus


@dataclass
class DatasetWindows:
    """The labeled windows (label >= 0) of one dataset, in token-table order."""

    dataset: str
    table: pa.Table
    corpus_path: str
    class_labels: np.ndarray = field(init=False)  # (K,) the dataset's label ids, sorted
    y: np.ndarray = field(init=False)  # (N,) class index 0..K-1 of each window

    def __post_init__(self) -> None:
        if self.table.num_rows == 0:
            raise ValueError(f"no labeled windows of dataset {self.dataset!r}")
        labels = self.table.column("label").to_numpy()
        self.class_labels, self.y = np.unique(labels, return_inverse=True)
        if self.class_labels.size < 2:
            raise ValueError(f"dataset {self.dataset!r} has a single label; nothing to classify")

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def class_names(self) -> list[str]:
        names = dict(zip(self.table.column("label").to_pylist(), self.table.column("label_name").to_pylist()))
        return [names[int(c)] or str(int(c)) for c in self.class_labels]

    @cached_property
    def tokens(self) -> list[WindowTokens]:
        return table_to_windows(self.table)

    def token_batch(self, idx: np.ndarray, max_tokens: int) -> TokenBatch:
        windows = self.tokens
        return TokenBatch.collate([windows[i] for i in idx], max_tokens=max_tokens)

    @cached_property
    def raw(self) -> np.ndarray:
        """(N, T, C) float32 harmonized EMG of every window, read once per recording."""
        corpus = Corpus(self.corpus_path)
        key = np.asarray(self.table.column("key").to_pylist())
        start = self.table.column("start").to_numpy()
        stop = self.table.column("stop").to_numpy()
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
    table = table.filter(pc.greater_equal(table.column("label"), 0))
    present = sorted(set(table.column("dataset").to_pylist()))
    chosen = datasets or present
    missing = sorted(set(chosen) - set(present))
    if missing:
        raise ValueError(f"{tokens} has no labeled windows of {missing}; it holds {present}")
    return {name: DatasetWindows(name, table.filter(pc.equal(table.column("dataset"), name)), str(corpus_path))
            for name in chosen}
