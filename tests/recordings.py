"""Small hand-made recordings for unit tests (no generator, no files)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from preprocessing.geometry import ElectrodeLayout
from preprocessing.recording import RawRecording, Segment


def make_raw(emg: np.ndarray, fs: float = 1000.0, segments: list[Segment] | None = None, joins: list[int] | None = None,
             key: tuple[str, str, str] = ("unit", "s1", "day1"), adc_range=None,
             notch_hz: tuple[float, ...] = ()) -> RawRecording:
    dataset, subject, session = key
    return RawRecording(
        dataset=dataset, subject=subject, session=session, fs=fs, emg=emg, units="uV",
        layout=ElectrodeLayout.from_dict({"layout": "ring"}, n_channels=emg.shape[1]),
        segments=segments or [], joins=joins or [], rest_label=0, source_files=[f"{dataset}_{subject}_{session}.csv"],
        adc_range=adc_range, label_names={0: "rest", 1: "fist"}, notch_hz=notch_hz,
    )


def noise(n: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, channels))


@dataclass(frozen=True)
class ArrayJob:
    """A source job over a fixed recording (what manifests and the generator produce)."""

    dataset: str
    subject: str
    session: str
    seconds: float = 4.0
    fail: str = ""  # a DataError message to raise instead of loading

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.subject}/{self.session}"

    def load(self) -> RawRecording:
        if self.fail:
            from preprocessing.errors import DataError

            raise DataError(f"{self.key}.csv", self.fail)
        n = int(self.seconds * 1000)
        segs = [Segment(0, n // 2, 0, "rest", 0), Segment(n // 2, n, 1, "fist", 0)]
        seed = zlib.crc32(self.key.encode())
        return make_raw(noise(n, 4, seed=seed) * 10, segments=segs, key=(self.dataset, self.subject, self.session))
