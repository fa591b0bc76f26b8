"""The held-out subject as a method may see it: strict statistics from allowed windows only.

The corpus z-scores each recording with statistics of the whole recording (harmonize.py), and
`aemg tokenize` detects events against a noise floor of the whole recording. For the subjects a
method trains on that is allowed; for the held-out subject it would let its test windows shape
the inputs every method is scored on. Under `normalization=strict` (the default) the held-out
subject's windows are rebuilt from its **reference windows** (`folds.reference_split`: its
calibration windows, or at 0 % the unlabeled warm-up) before any method sees them:

1. back to the band-passed signal in source units: z * scale + center with the recording's stored
   statistics (an exact inverse of the corpus's z-score, so the stored statistics only undo what
   they did and leave no trace);
2. per channel, the median and 1.4826 * MAD over every sample of the reference windows, pooled
   over the held-out subject's recordings (the corpus's estimator, on allowed samples only);
3. a channel is usable when it is not marked dead (a mostly missing channel, decided from where
   the source had no samples) and is not flat on the reference windows;
4. the noise floor of the event detector: `events.noise_floor` of the envelope of the reference
   samples after step 2's normalization;
5. every held-out window renormalized with step 2 and tokenized against step 4's floor and step
   3's channels (the same `tokenize_window` as `aemg tokenize`).

Band-pass, resampling and the notch are fixed linear filters whose design depends on no sample
(the notch frequencies come from the dataset's manifest), so they may run over the whole recording.
A filter does spread each sample over its impulse response, though, within one source file: the
band-pass's falls below 1e-5 of its peak within 0.5 s at 200 Hz (1e-11 at 1 kHz), the distance two
segment margins keep between calibration and test windows of different repetitions; a 60 Hz notch
(Q = 30) rings with a 0.16 s time constant, so where a notched source holds several repetitions in
one file a test window reaches calibration samples 0.5 s away at the percent level. Of the shared
datasets only 3DC is notched, and it stores one file per repetition, so nothing crosses there.
`normalization=transductive` keeps the corpus's whole-recording statistics for the held-out subject
too (the protocol before this module; every report labels it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aemg_dist.evaluation.data import DatasetWindows
from aemg_dist.events import envelope, noise_floor
from aemg_dist.tokens import WindowTokens, tokenize_window

NORMALIZATIONS = ("strict", "transductive")
MAD_TO_STD = 1.4826


@dataclass(frozen=True)
class SubjectStatistics:
    """What the held-out subject's windows are normalized and tokenized with, and what it came from."""

    center: np.ndarray  # (C,) per-channel median of the reference samples, source units
    scale: np.ndarray  # (C,) 1.4826 * MAD of the reference samples, source units
    floor: np.ndarray  # (C,) noise floor of the renormalized reference envelope
    channel_ok: np.ndarray  # (C,) bool
    reference_rows: np.ndarray  # the windows it was computed from


def unique_samples(windows: np.ndarray, start: np.ndarray, key: np.ndarray) -> np.ndarray:
    """The samples covered by equal-length windows (N, T, C) of the same rate, each sample once: windows
    sorted by (key, start), each contributing the samples up to where the next one of its recording begins."""
    order = np.lexsort((start, key))
    start, key = start[order], key[order]
    length = windows.shape[1]
    own = np.full(order.size, length, dtype=np.int64)
    same_next = key[1:] == key[:-1]
    own[:-1][same_next] = np.clip(start[1:][same_next] - start[:-1][same_next], 0, length)
    take = np.arange(length)[None, :] < own[:, None]
    return windows[order][take]  # (samples, C), recording after recording, in time order


def subject_statistics(source_units: np.ndarray, start: np.ndarray, key: np.ndarray, usable: np.ndarray,
                       fs: float, events_cfg, flat_tolerance: float, rows: np.ndarray) -> SubjectStatistics:
    """Statistics of the held-out subject from its reference windows (see the module docstring).

    source_units: (N, T, C) the reference windows in source units; start/key: (N,) where each window lies;
    usable: (C,) channels not marked dead in the corpus; rows: the windows' row numbers, kept for the record.
    """
    if source_units.shape[0] == 0:
        raise ValueError("no reference windows: the held-out subject's statistics need at least one")
    samples = unique_samples(source_units, start, key).astype(np.float64)
    center = np.median(samples, axis=0)
    scale = MAD_TO_STD * np.median(np.abs(samples - center), axis=0)
    channel_ok = np.asarray(usable, dtype=bool) & (scale > flat_tolerance)
    scale = np.where(scale > flat_tolerance, scale, 1.0)  # a flat channel stays at zero, as in the corpus
    normalized = ((samples - center) / scale).astype(np.float32)
    floor = noise_floor(envelope(normalized, fs, events_cfg)[0], events_cfg)
    return SubjectStatistics(center=center, scale=scale, floor=floor, channel_ok=channel_ok,
                             reference_rows=np.asarray(rows))


@dataclass
class HeldOutView:
    """The held-out windows (`rows`, sorted) as methods see them for one reference set.

    `raw` holds every held-out window's samples; tokens are made on first use per window, since only
    the AEMG methods read them. `stats` is None in transductive mode (corpus statistics, stored tokens).
    """

    data: DatasetWindows
    rows: np.ndarray
    raw: np.ndarray  # (len(rows), T, C) float32
    stats: SubjectStatistics | None
    _tokens: dict[int, WindowTokens] = field(default_factory=dict)

    def positions(self, idx: np.ndarray) -> np.ndarray:
        """Positions of held-out row numbers idx in `rows` (IndexError for any other row)."""
        pos = np.minimum(np.searchsorted(self.rows, idx), max(self.rows.size - 1, 0))
        if idx.size and (self.rows.size == 0 or not np.array_equal(self.rows[pos], idx)):
            raise IndexError("rows outside the held-out windows")
        return pos

    def windows(self, idx: np.ndarray) -> list[WindowTokens]:
        """The tokens of held-out windows idx: stored ones (transductive) or made with the subject's statistics."""
        if self.stats is None:
            self.positions(idx)
            return [self.data.tokens[i] for i in idx.tolist()]
        settings = self.data.tokenize_config
        for i, p in zip(idx.tolist(), self.positions(idx).tolist()):
            if i not in self._tokens:
                recording = self.data.recording(self.data.keys[i])
                self._tokens[i] = tokenize_window(self.raw[p], self.data.fs, recording.coords, recording.source_fs,
                                                  self.stats.channel_ok, settings.events, settings.tokens,
                                                  floor=self.stats.floor)
        return [self._tokens[i] for i in idx.tolist()]


def heldout_view(data: DatasetWindows, heldout: np.ndarray, reference: np.ndarray, normalization: str) -> HeldOutView:
    """The held-out windows `heldout` normalized and tokenized with statistics of the windows `reference` only
    (strict), or as the corpus stored them (transductive)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    heldout = np.sort(np.asarray(heldout))
    if normalization == "transductive":
        return HeldOutView(data, heldout, data.raw[heldout], None)
    if not np.isin(reference, heldout).all():
        raise ValueError("reference windows must be held-out windows")
    usable = np.logical_and.reduce([data.recording(k).usable for k in np.unique(data.keys[heldout])])
    stats = subject_statistics(data.source_units(reference), data.starts[reference], data.keys[reference], usable,
                               data.fs, data.tokenize_config.events, data.flat_tolerance, reference)
    return HeldOutView(data, heldout, renormalize(data.source_units(heldout), stats), stats)


def renormalize(source_units: np.ndarray, stats: SubjectStatistics) -> np.ndarray:
    """(N, T, C) source-unit windows -> z-scores with the subject's reference statistics, float32."""
    return ((source_units - stats.center) / stats.scale).astype(np.float32)
