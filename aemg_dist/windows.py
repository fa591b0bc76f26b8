"""Windows: the time spans that become one row of tokens.

One function cuts both kinds, from spans of a recording:

- `chunks` (pretraining): the spans are the contiguous pieces of the recording between file
  joins, cut into back-to-back chunks (stride = length by default), so every sample — and so
  every contraction — falls in exactly one chunk. An event that crosses a chunk border is
  split at it: its first part ends the earlier chunk and its second part opens the next one
  (activity on at a window's start is an event starting at the start), nothing is lost or
  counted twice. A last piece shorter than `min_fraction` of a chunk is dropped.
- `labeled` (classification): the spans are the labeled segments, shrunk by `margin_s` at each
  end to keep transitions out, cut into windows of `length_s` every `stride_s`. Segments too
  short for one window are skipped and counted.

Windows never cross a join, so no window mixes two source files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aemg_dist.config import check_ranges

from preprocessing.recording import Segment, split_at_joins

WINDOW_KINDS = ("chunks", "labeled")


@dataclass(frozen=True)
class WindowConfig:
    kind: str = "chunks"
    length_s: float = 2.0
    stride_s: float = 0.0  # 0 = the window length (back-to-back)
    margin_s: float = 0.0  # labeled: distance kept from each segment edge
    min_fraction: float = 0.5  # chunks: keep a last partial chunk at least this long (fraction of length)
    include_rest: bool = True  # labeled: also cut windows from rest segments

    def __post_init__(self) -> None:
        if self.kind not in WINDOW_KINDS:
            raise ValueError(f"window kind must be one of {WINDOW_KINDS}, got {self.kind!r}")
        check_ranges(self, length_s="(0, 3600]", stride_s="[0, 3600]", margin_s="[0, 3600]", min_fraction="(0, 1]")


@dataclass(frozen=True)
class Windows:
    """Windows of one recording: [start, stop) in samples, with the label of their span (-1: none)."""

    start: np.ndarray  # (W,) int64
    stop: np.ndarray  # (W,) int64
    label: np.ndarray  # (W,) int64
    rep: np.ndarray  # (W,) int64
    skipped_spans: int = 0  # labeled spans too short for one window

    def __len__(self) -> int:
        return int(self.start.shape[0])


def recording_spans(n_samples: int, segments: list[Segment], joins: list[int], cfg: WindowConfig,
                    rest_label: int | None = None) -> list[Segment]:
    """The spans `cut_windows` works on: pieces between joins (chunks) or labeled segments."""
    if cfg.kind == "labeled":
        return [s for s in segments if cfg.include_rest or s.label != rest_label]
    return [Segment(a, b, -1, "", -1) for a, b in split_at_joins(n_samples, joins)]


def cut_windows(spans: list[Segment], fs: float, cfg: WindowConfig) -> Windows:
    """Cut every span into windows of cfg.length_s every cfg.stride_s (see the module docstring)."""
    length = int(round(cfg.length_s * fs))
    stride = int(round(cfg.stride_s * fs)) or length
    margin = int(round(cfg.margin_s * fs)) if cfg.kind == "labeled" else 0
    minimum = length if cfg.kind == "labeled" else int(np.ceil(cfg.min_fraction * length))
    starts, stops, labels, reps = [], [], [], []
    skipped = 0
    for span in spans:
        first, last = span.start + margin, span.stop - margin
        if last - first < minimum:
            skipped += 1
            continue
        offsets = np.arange(first, last - minimum + 1, stride, dtype=np.int64)
        ends = np.minimum(offsets + length, last)
        starts.append(offsets)
        stops.append(ends)
        labels.append(np.full(offsets.shape, span.label, dtype=np.int64))
        reps.append(np.full(offsets.shape, span.rep, dtype=np.int64))
    if not starts:
        empty = np.zeros(0, dtype=np.int64)
        return Windows(empty, empty, empty, empty, skipped)
    order = np.argsort(np.concatenate(starts), kind="stable")
    return Windows(*(np.concatenate(a)[order] for a in (starts, stops, labels, reps)), skipped_spans=skipped)
