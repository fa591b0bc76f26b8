"""Harmonization: one recording in source units/rate -> the corpus's common representation.

`harmonize` below does it on the whole recording at once (the reference, and what in-memory callers use);
`streaming.harmonize_chunked` does the same in time chunks with bounded memory and is what `aemg prepare`
runs. Both share the decisions made here (flags, notch lines, segment rescaling).

Steps, in order, each per contiguous piece (between file joins) so no filter transient or
resampling kernel crosses a join:

1. non-finite samples are linearly interpolated and flagged (`nan_runs`); a channel with more than
   `max_nan_fraction` of them is zeroed and flagged dead; an all-NaN recording is an error;
2. quality flags per channel on the raw signal: flat, clipped (at the device's ADC limits, or
   at a repeated extreme value when the limits are unknown), powerline (a strong 50/60 Hz line);
3. DC removal (per-piece median) and a zero-phase Butterworth band-pass from 20 Hz to
   min(450 Hz, 0.45 * source rate, 0.45 * target rate);
4. notch at the mains lines the source declares (manifest `notch_hz`), where they fall inside
   that band. The lines are declared, not detected: a filter chosen from the whole recording's
   spectrum would let a held-out subject's test samples decide how its calibration samples are
   filtered. `detect_notch` adds lines found in the spectrum (50/60 Hz and harmonics) for sources
   whose mains is unknown; that decision uses the whole recording (transductive);
5. polyphase resampling to the target rate; segment and join boundaries are rescaled with the
   same rational factor, so they land within one sample of where they were;
6. robust per-channel z-score (median, 1.4826 * MAD) over the whole recording, label-free, from the
   samples that were not repaired; the statistics are kept so the filtered signal can be recovered
   (`denormalize`). Evaluation undoes it for a held-out subject and normalizes with statistics of
   allowed windows only (aemg_dist/evaluation/heldout.py).

Channel health is decided from these statistics, not only from flags: a channel is dead (out of
`channel_ok`, so it gets no events or tokens) when it is flat, when more than `max_nan_fraction` of it
was missing, or when more than `clip_dead_fraction` of it sits at the rails. Why these shares: a
repaired stretch is a straight line that the band-pass turns into silence; were it counted, a channel
missing one of its two files got a scale thousands of times too small and z-values in the tens of
thousands, and even at 45 % missing the median/MAD is the repair's more than the muscle's (peaks of
|z| above 150). Repaired samples are therefore left out of the statistics, and past a quarter of the channel
the quiet spells tokenization would see are as much invented as recorded. A channel that spends more
than half its samples at the rails carries the converter's square wave, not an amplitude. A few clipped
peaks (`clip_fraction`) only flag it. A recording without a usable channel is refused (DataError).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
from scipy import signal

from aemg_dist.config import check_ranges

from .errors import DataError
from .recording import RawRecording, Segment, validate_segments

MIN_FS_HZ = 50.0
MAX_FS_HZ = 100_000.0
MAD_TO_STD = 1.4826
BAD_FLAGS = ("flat", "dead")  # channels with these flags carry no usable signal


@dataclass
class HarmonizeConfig:
    """Knobs of harmonization; every prepared corpus stores the values it was made with."""

    target_fs: float = 1000.0
    highpass_hz: float = 20.0
    lowpass_hz: float = 450.0
    band_fraction: float = 0.45  # upper band edge as a fraction of the lower of source and target rate
    filter_order: int = 4
    notch: bool = True  # notch the mains lines the source declares (RawRecording.notch_hz)
    detect_notch: bool = False  # also notch lines detected in the whole recording's spectrum (transductive)
    notch_q: float = 30.0
    line_prominence: float = 8.0  # line power / neighbouring spectrum needed to notch or flag
    powerline_flag_ratio: float = 0.3  # share of band power in mains lines that flags a channel
    clip_fraction: float = 0.01  # share of samples at a rail that flags a channel as clipped
    clip_dead_fraction: float = 0.5  # more samples at the rails than this marks a channel dead
    flat_tolerance: float = 1e-6  # a channel whose MAD and std are below this (source units) is flat (and dead)
    max_nan_fraction: float = 0.25  # more non-finite (repaired) samples than this marks a channel dead
    # time chunk of the streaming path (streaming.py): its working memory is about 15 float64 chunks (10 s of 64
    # channels at 2 kHz is 10 MB) whatever the recording's length; each notch's backward pass also runs over a
    # 4.4 s margin per chunk (Q 30 at 50 Hz), so much shorter chunks cost time. The corpus content does not
    # depend on it (within float32 tolerance), so a corpus is not tied to the value
    chunk_seconds: float = 10.0

    def __post_init__(self) -> None:
        check_ranges(self, target_fs=f"[{MIN_FS_HZ:g}, {MAX_FS_HZ:g}]", highpass_hz="(0, inf)", lowpass_hz="(0, inf)",
                     band_fraction="(0, 0.5)", filter_order="[1, 16]", notch_q="(0, inf)", line_prominence="(0, inf)",
                     powerline_flag_ratio="(0, 1]", clip_fraction="(0, 1]", clip_dead_fraction="(0, 1]",
                     flat_tolerance="[0, inf)", max_nan_fraction="[0, 1)",
                     chunk_seconds="(0, inf)")
        if not self.highpass_hz < self.lowpass_hz:
            raise ValueError(f"need 0 < highpass_hz < lowpass_hz, got {self.highpass_hz}, {self.lowpass_hz}")
        if self.clip_dead_fraction < self.clip_fraction:
            raise ValueError(f"clip_dead_fraction ({self.clip_dead_fraction}) must be >= clip_fraction "
                             f"({self.clip_fraction})")


@dataclass
class HarmonizedRecording:
    """A recording in corpus form: normalized float32 at the target rate plus all metadata."""

    raw: RawRecording  # source metadata (its emg is not kept after harmonization)
    emg: np.ndarray  # (n_samples, n_channels) float32, robust z-scores
    fs: float
    valid_band_hz: tuple[float, float]
    center: np.ndarray  # per-channel median of the filtered signal (source units)
    scale: np.ndarray  # per-channel robust std of the filtered signal (source units)
    quality: list[list[str]]
    notch_hz: list[float]
    segments: list[Segment] = field(default_factory=list)
    joins: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.raw.key

    @property
    def channel_ok(self) -> list[bool]:
        return [not any(flag in BAD_FLAGS for flag in flags) for flags in self.quality]

    def attrs(self, config: HarmonizeConfig) -> dict[str, Any]:
        """JSON-safe metadata stored as the recording group's attributes."""
        raw = self.raw
        return {
            "dataset": raw.dataset,
            "subject": raw.subject,
            "session": raw.session,
            "fs": self.fs,
            "source_fs": raw.fs,
            "valid_band_hz": list(self.valid_band_hz),
            "n_samples": int(self.emg.shape[0]),
            "n_channels": int(self.emg.shape[1]),
            "units": raw.units,
            "normalization": {"method": "robust_zscore", "center": self.center.tolist(), "scale": self.scale.tolist()},
            "channel_quality": self.quality,
            "channel_ok": self.channel_ok,
            "electrodes": raw.layout.to_dict(),
            "canonical_coordinates": raw.layout.canonical_coordinates().tolist(),
            "device": raw.device,
            "license": raw.license,
            "segments": [s.to_dict() for s in self.segments],
            "joins": self.joins,
            "rest_label": raw.rest_label,
            "label_names": {str(k): v for k, v in sorted(raw.label_names.items())},
            "notch_hz": self.notch_hz,
            "source_files": raw.source_files,
            "harmonize": asdict(config),
        }


def denormalize(z: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Invert the robust z-score: back to the filtered signal in source units."""
    return z * np.asarray(scale, dtype=np.float64) + np.asarray(center, dtype=np.float64)


def valid_band(source_fs: float, config: HarmonizeConfig) -> tuple[float, float]:
    """The frequency band that carries information after harmonization."""
    high = min(config.lowpass_hz, config.band_fraction * min(source_fs, config.target_fs))
    if high <= config.highpass_hz:
        raise DataError("band", f"source rate {source_fs:g} Hz leaves no band above {config.highpass_hz:g} Hz")
    return (config.highpass_hz, high)


def resample_ratio(source_fs: float, target_fs: float) -> Fraction:
    """target/source as a small rational up/down pair for polyphase resampling."""
    return Fraction(target_fs / source_fs).limit_denominator(1000)


def harmonized_length(n_samples: int, source_fs: float, config: HarmonizeConfig) -> int:
    """Samples of a harmonized recording of n_samples at source_fs: its pieces' rescaled lengths add up to this."""
    return _scaled(n_samples, resample_ratio(source_fs, config.target_fs))


def harmonize(raw: RawRecording, config: HarmonizeConfig | None = None) -> HarmonizedRecording:
    """Harmonize the whole recording at once; raises DataError naming the recording for unusable input.

    The reference path: it holds the recording as float64 several times over. `streaming.harmonize_chunked`
    gives the same result in bounded memory and is what `aemg prepare` uses.
    """
    config = config or HarmonizeConfig()
    where = raw.source_files[0] if len(raw.source_files) == 1 else raw.key
    _check_input(raw, where)
    band = valid_band(raw.fs, config)
    x = np.asarray(raw.emg, dtype=np.float64)
    pieces = raw.pieces()

    x, quality, repaired = _repair_non_finite(x, config, where)
    _flag_raw_quality(x, raw, config, quality)
    sos_band = signal.butter(config.filter_order, band, btype="bandpass", fs=raw.fs, output="sos")
    freqs, psd = _power_spectrum(x, raw.fs)
    notch_hz = _notch_lines(raw, band, freqs, psd, config)
    _flag_powerline(freqs, psd, band, config, quality)

    ratio = resample_ratio(raw.fs, config.target_fs)
    out_pieces = []
    for start, stop in pieces:
        piece = x[start:stop] - np.median(x[start:stop], axis=0)
        piece = _filtfilt(sos_band, piece)
        for f0 in notch_hz:
            b, a = signal.iirnotch(f0, config.notch_q, fs=raw.fs)
            piece = signal.filtfilt(b, a, piece, axis=0, padlen=min(3 * max(len(a), len(b)), piece.shape[0] - 1))
        if ratio != 1:
            piece = signal.resample_poly(piece, ratio.numerator, ratio.denominator, axis=0)
        # piece boundaries land exactly on the rescaled join positions
        out_pieces.append(_fit_length(piece, _scaled(stop, ratio) - _scaled(start, ratio)))
    filtered = np.concatenate(out_pieces, axis=0)

    center, scale = _robust_statistics(filtered, _at_rate(~repaired, ratio, filtered.shape[0]))
    scale = _finish_quality(quality, scale, where)
    z = ((filtered - center) / scale).astype(np.float32)
    return HarmonizedRecording(
        raw=raw, emg=z, fs=float(config.target_fs), valid_band_hz=band, center=center, scale=scale,
        quality=quality, notch_hz=notch_hz, segments=scaled_segments(raw, ratio),
        joins=[_scaled(a, ratio) for a, _ in pieces[1:]],
    )


def scaled_segments(raw: RawRecording, ratio: Fraction) -> list[Segment]:
    """The recording's segments at the new rate (the same rounding as the joins)."""
    return [Segment(_scaled(s.start, ratio), _scaled(s.stop, ratio), s.label, s.label_name, s.rep)
            for s in raw.segments]


def _notch_lines(raw: RawRecording, band: tuple[float, float], freqs: np.ndarray, psd: np.ndarray,
                 config: HarmonizeConfig) -> list[float]:
    """The declared mains lines inside the band, plus detected ones when asked; none with notch off."""
    if not config.notch:
        return []
    return sorted({float(f) for f in raw.notch_hz if band[0] < f < band[1]}
                  | set(_mains_lines(freqs, psd, band, config) if config.detect_notch else []))


def _finish_quality(quality: list[list[str]], scale: np.ndarray, where: str) -> np.ndarray:
    """A zero scale flags the channel flat (its scale becomes 1); flat is dead; DataError when all are dead."""
    scale = np.array(scale, dtype=np.float64)
    degenerate = ~(scale > 0)
    scale[degenerate] = 1.0
    for ch in np.flatnonzero(degenerate):
        _add_flag(quality, ch, "flat")
    for ch, flags in enumerate(quality):
        if "flat" in flags:
            _add_flag(quality, ch, "dead")
    if all("dead" in flags for flags in quality):
        raise DataError(where, "no usable channel (" + ", ".join(f"channel {ch}: {'/'.join(flags)}"
                                                                 for ch, flags in enumerate(quality)) + ")")
    return scale


def _check_input(raw: RawRecording, where: str) -> None:
    if raw.emg.ndim != 2:
        raise DataError(where, f"EMG must be 2-D (samples, channels), got shape {raw.emg.shape}")
    if raw.n_samples == 0 or raw.n_channels == 0:
        raise DataError(where, f"empty recording (shape {raw.emg.shape})")
    if not (np.isfinite(raw.fs) and MIN_FS_HZ <= raw.fs <= MAX_FS_HZ):
        raise DataError(where, f"sampling rate {raw.fs!r} Hz is missing or absurd (expected {MIN_FS_HZ:g}-{MAX_FS_HZ:g} Hz)")
    if raw.layout.n_channels != raw.n_channels:
        raise DataError(where, f"{raw.n_channels} channels in the data but {raw.layout.n_channels} in the electrode layout")
    min_piece = min(b - a for a, b in raw.pieces())
    if min_piece < 3 * 8:  # zero-phase filtering needs a few filter lengths of signal
        raise DataError(where, f"a piece of only {min_piece} samples is too short to filter")
    validate_segments(raw.segments, raw.n_samples, where)


def _add_flag(quality: list[list[str]], channel: int, flag: str) -> None:
    if flag not in quality[channel]:
        quality[channel].append(flag)


def _repair_non_finite(x: np.ndarray, config: HarmonizeConfig,
                       where: str) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """(x with every non-finite sample interpolated, or the channel zeroed when more than max_nan_fraction of it
    is missing; quality flags; the (samples, channels) mask of repaired samples)."""
    bad = ~np.isfinite(x)
    quality, dead = _repair_flags(bad.mean(axis=0), config)
    if not bad.any():
        return x, quality, bad
    if bad.all():
        raise DataError(where, "every sample is NaN or Inf")
    x = x.copy()
    t = np.arange(x.shape[0])
    x[:, dead] = 0.0
    for ch in np.flatnonzero(bad.any(axis=0) & ~dead):
        ok = ~bad[:, ch]
        x[bad[:, ch], ch] = np.interp(t[bad[:, ch]], t[ok], x[ok, ch])
    return x, quality, bad


def _repair_flags(fraction: np.ndarray, config: HarmonizeConfig) -> tuple[list[list[str]], np.ndarray]:
    """(quality flags, dead mask) from each channel's share of non-finite samples: past max_nan_fraction
    the channel is zeroed and dead; any share flags nan_runs."""
    quality: list[list[str]] = [[] for _ in range(len(fraction))]
    dead = fraction > config.max_nan_fraction
    for ch in np.flatnonzero(fraction > 0):
        if dead[ch]:
            _add_flag(quality, ch, "dead")
        _add_flag(quality, ch, "nan_runs")
    return quality, dead


def _at_rate(mask: np.ndarray, ratio: Fraction, n: int) -> np.ndarray:
    """A per-sample mask at the source rate, taken to the n samples at the target rate (nearest earlier sample)."""
    source = np.minimum(np.arange(n) * ratio.denominator // ratio.numerator, mask.shape[0] - 1)
    return mask[source]


def _robust_statistics(x: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel median and robust std (1.4826 * MAD) over the samples `kept` (all, for a channel with none)."""
    if kept.all():
        center = np.median(x, axis=0)
        return center, MAD_TO_STD * np.median(np.abs(x - center), axis=0)
    center, scale = np.empty(x.shape[1]), np.empty(x.shape[1])
    for ch in range(x.shape[1]):
        values = x[kept[:, ch], ch] if kept[:, ch].any() else x[:, ch]
        center[ch] = np.median(values)
        scale[ch] = MAD_TO_STD * np.median(np.abs(values - center[ch]))
    return center, scale


def _flag_raw_quality(x: np.ndarray, raw: RawRecording, config: HarmonizeConfig, quality: list[list[str]]) -> None:
    spread = np.median(np.abs(x - np.median(x, axis=0)), axis=0)
    if raw.adc_range is not None:
        low, high = raw.adc_range
        at_rail = (x <= low) | (x >= high)
    else:  # unknown converter: a repeated extreme value is a rail
        at_rail = (x == x.min(axis=0)) | (x == x.max(axis=0))
    _flag_raw_spread(spread, x.std(axis=0), at_rail.mean(axis=0), config, quality)


def _flag_raw_spread(spread: np.ndarray, std: np.ndarray, share: np.ndarray, config: HarmonizeConfig,
                     quality: list[list[str]]) -> None:
    """Flat (MAD and std within flat_tolerance) and clipped/dead (share of samples at the rails) channels."""
    for ch in np.flatnonzero((spread <= config.flat_tolerance) & (std <= config.flat_tolerance)):
        _add_flag(quality, ch, "flat")
    for ch in np.flatnonzero(share > config.clip_fraction):
        if "flat" not in quality[ch]:
            _add_flag(quality, ch, "clipped")
            if share[ch] > config.clip_dead_fraction:
                _add_flag(quality, ch, "dead")


def _power_spectrum(x: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    nperseg = int(min(x.shape[0], 2 ** int(np.ceil(np.log2(2 * fs)))))  # ~0.5 Hz bins
    freqs, psd = signal.welch(x - x.mean(axis=0), fs=fs, nperseg=nperseg, axis=0)
    return freqs, psd


def _line_power(freqs: np.ndarray, psd: np.ndarray, f0: float) -> tuple[np.ndarray, np.ndarray]:
    """Power in a ±1 Hz line at f0 and the median neighbouring density (5-15 Hz away)."""
    line = np.abs(freqs - f0) <= 1.0
    near = (np.abs(freqs - f0) >= 5.0) & (np.abs(freqs - f0) <= 15.0)
    if not line.any() or not near.any():
        return np.zeros(psd.shape[1]), np.ones(psd.shape[1])
    return psd[line].max(axis=0), np.median(psd[near], axis=0) + 1e-30


def _mains_lines(freqs: np.ndarray, psd: np.ndarray, band: tuple[float, float], config: HarmonizeConfig) -> list[float]:
    """Mains frequencies (50/60 Hz and harmonics) inside the band where any channel shows a line."""
    lines = []
    for mains in (50.0, 60.0):
        for f0 in np.arange(mains, band[1], mains):
            if f0 <= band[0]:
                continue
            peak, floor = _line_power(freqs, psd, f0)
            if np.max(peak / floor) >= config.line_prominence:  # one humming channel is enough (3DC)
                lines.append(float(f0))
    return lines


def _flag_powerline(freqs: np.ndarray, psd: np.ndarray, band: tuple[float, float], config: HarmonizeConfig,
                    quality: list[list[str]]) -> None:
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    total = psd[in_band].sum(axis=0) + 1e-30
    near_mains = np.zeros_like(total)
    for mains in (50.0, 60.0):
        harmonics = np.arange(mains, band[1], mains)
        if len(harmonics):
            near = np.min(np.abs(freqs[:, None] - harmonics[None, :]), axis=1) <= 1.0
            near_mains = np.maximum(near_mains, psd[near & in_band].sum(axis=0))
    for ch in np.flatnonzero(near_mains / total > config.powerline_flag_ratio):
        _add_flag(quality, ch, "powerline")


def _filtfilt(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    padlen = min(3 * (2 * len(sos) + 1), x.shape[0] - 1)
    return signal.sosfiltfilt(sos, x, axis=0, padlen=padlen)


def _scaled(index: int, ratio: Fraction) -> int:
    """A sample index at the new rate: round half up, the same rule for joins and segments."""
    return int(Fraction(index) * ratio + Fraction(1, 2))


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or edge-pad by the one sample polyphase output length may differ from the target."""
    if x.shape[0] >= n:
        return x[:n]
    return np.concatenate([x, np.repeat(x[-1:], n - x.shape[0], axis=0)], axis=0)
