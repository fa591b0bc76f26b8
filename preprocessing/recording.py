"""The in-memory recording every source adapter produces and harmonization consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .errors import DataError
from .geometry import ElectrodeLayout


@dataclass(frozen=True)
class Segment:
    """A labeled span [start, stop) in samples of its recording."""

    start: int
    stop: int
    label: int
    label_name: str
    rep: int = -1  # repetition index where the protocol has repetitions

    def to_dict(self) -> dict:
        return {"start": self.start, "stop": self.stop, "label": self.label, "label_name": self.label_name, "rep": self.rep}


@dataclass
class RawRecording:
    """One session of one subject in source units at the source rate.

    Sources that store one short file per gesture are concatenated into one recording per
    session; `joins` holds the sample index where each later file starts, so filters are run
    per piece and no contraction event is invented across a join.
    """

    dataset: str
    subject: str
    session: str
    fs: float
    emg: np.ndarray  # (n_samples, n_channels), source units
    units: str
    layout: ElectrodeLayout
    segments: list[Segment] = field(default_factory=list)
    joins: list[int] = field(default_factory=list)
    rest_label: int | None = None
    device: str = ""
    license: str = ""
    source_files: list[str] = field(default_factory=list)
    adc_range: tuple[float, float] | None = None  # known converter limits, for clipping flags
    notch_hz: tuple[float, ...] = ()  # mains lines the source is known to carry (manifest), notched if in band
    label_names: dict[int, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The recording's group path in the corpus: dataset/subject/session."""
        return f"{self.dataset}/{self.subject}/{self.session}"

    @property
    def n_samples(self) -> int:
        return int(self.emg.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.emg.shape[1])

    def pieces(self) -> list[tuple[int, int]]:
        """Contiguous [start, stop) spans between joins."""
        return split_at_joins(self.n_samples, self.joins)


def split_at_joins(n_samples: int, joins: Iterable[int]) -> list[tuple[int, int]]:
    """Contiguous [start, stop) spans of a recording between its file joins."""
    bounds = [0, *sorted(j for j in joins if 0 < j < n_samples), n_samples]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def validate_segments(segments: list[Segment], n_samples: int, where: str) -> None:
    """Segments must be non-empty, lie inside [0, n_samples) and not overlap (DataError otherwise)."""
    ordered = sorted(segments, key=lambda s: s.start)
    for seg in ordered:
        if not 0 <= seg.start < seg.stop <= n_samples:
            raise DataError(where, f"segment [{seg.start}, {seg.stop}) label {seg.label} is empty or outside "
                                   f"the recording of {n_samples} samples")
    for before, after in zip(ordered[:-1], ordered[1:]):
        if after.start < before.stop:
            raise DataError(where, f"segments [{before.start}, {before.stop}) and [{after.start}, {after.stop}) overlap")
