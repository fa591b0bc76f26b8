"""Neuromuscular tokens: one fixed-size feature vector per (contraction event, channel).

The tokens of one event form an ordered **group**: active channels first, sorted by their onset
(the recruitment order across muscles; ties by channel index), then, with `include_quiet`, one
token per quiet channel of the device, flagged inactive and sorted by amplitude (RMS over the
event) descending, ties by channel index. `rank` is the position inside the group. Channels
with `channel_ok` False produce no token at all. A window's tokens are ordered by (group, rank),
and groups are in time order.

With `window_summary`, group 0 of every window is a **summary group**: one token per good channel
whose span is the whole window, with the same features (its active flag: the channel has an active
interval in the window; its span: from the first onset to the last offset of those, else the whole
window), ordered like an event's tokens, and the events follow as groups 1..E. A window where
no event crossed the threshold otherwise has no token at all, and every such window looks the same:
on the shared data 23 % of 3DC's supination and pronation windows and 65 % of MultiDay's hand-closed
windows, whose amplitude and spectrum a TD+LDA baseline still reads.

Feature layout (`feature_names`), F = L + n_bands + 12:

    env_0 .. env_{L-1}  the channel's envelope over the event span, resampled to L points at the
                        centres of L equal sub-spans and divided by its peak (so in [0, 1])
    log_peak            log of the envelope peak over the event span (z-scored signal units)
    log_rms             log of the signal RMS over the event span
    log_snr             log(peak / noise floor of the channel): amplitude relative to rest
    log_duration        log of the token duration in seconds (active: the channel's own active
                        span inside the event; quiet: the event span)
    active              1.0 for an active channel, 0.0 for a quiet one
    onset_delay         (channel onset - event onset) / event duration, in [0, 1); 0 when quiet
    active_fraction     channel active span / event duration, in (0, 1]; 0 when quiet
    peak_position       where the resampled envelope peaks, in [0, 1]
    band_0 .. band_{k-1} relative power in k equal bands spanning (0, valid Nyquist]; sums to 1
    centroid            spectral centroid / valid Nyquist
    median_frequency    median frequency / valid Nyquist
    zero_crossings      zero crossings per second / (2 * valid Nyquist); a crossing counts when
                        its step exceeds 5 % of the span's RMS (Hudgins' dead zone), so faint rest
                        noise at the edges of an event span does not inflate it
    waveform_length     mean |x[n+1] - x[n]| / RMS * fs / (4 * sqrt(2) * valid Nyquist)

The valid Nyquist is min(source_fs, fs) / 2: a 200 Hz device has no content above 100 Hz even
after resampling to the 1 kHz corpus rate, and a 2 kHz source keeps none above 500 Hz after
downsampling. The last four spectral features are scaled so that a pure tone at frequency f gives
about f / valid Nyquist for each of them, which makes devices with different rates comparable.
Signal features (RMS, spectrum, zero crossings, waveform length) use the whole event span for
every channel, so one vectorized FFT covers all channels of an event (and all events of similar
length in the window).

A window with no event has zero tokens (`WindowTokens.empty`). In a `TokenBatch` it is a row with
`n_tokens == 0` and an all-False mask; every row has at least one slot, so the model can put
its own learned "no activity" token there. Which representation to learn is a model concern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft

from .config import check_ranges
from .events import EventConfig, Events, detect_events

_EPS = 1e-6  # amplitude floor for logs and ratios; signals are z-scored, so rest is ~1
_ZC_DEAD_ZONE = 0.05  # a zero crossing counts when its step exceeds this fraction of the span's RMS
_BATCH_ELEMENTS = 1 << 22  # samples per vectorized FFT batch (16 MB of float32): bounds memory on 64-channel grids


@dataclass(frozen=True)
class TokenConfig:
    """Token featurization knobs; invalid values raise ValueError at construction."""

    n_envelope_points: int = 16  # L: envelope morphology resolution
    n_bands: int = 4  # relative band powers over (0, valid Nyquist]
    include_quiet: bool = True  # add an inactive token for every quiet (good) channel of each event
    window_summary: bool = False  # group 0: one token per good channel over the whole window (module docstring)

    def __post_init__(self) -> None:
        # the upper bounds keep the feature count within the model's (ModelConfig size limits)
        check_ranges(self, n_envelope_points="[2, 128]", n_bands="[1, 64]")


def feature_names(cfg: TokenConfig) -> list[str]:
    """Names of the F feature columns, in order (see the module docstring for their meaning)."""
    return ([f"env_{i}" for i in range(cfg.n_envelope_points)]
            + ["log_peak", "log_rms", "log_snr", "log_duration", "active", "onset_delay", "active_fraction",
               "peak_position"]
            + [f"band_{j}" for j in range(cfg.n_bands)]
            + ["centroid", "median_frequency", "zero_crossings", "waveform_length"])


@dataclass(frozen=True)
class WindowTokens:
    """The T tokens of one window, ordered by (group, rank)."""

    features: np.ndarray  # (T, F) float32
    coords: np.ndarray  # (T, 3) float32, electrode position (cos angle, sin angle, z)
    onset_s: np.ndarray  # (T,) float32, token onset relative to the window start
    duration_s: np.ndarray  # (T,) float32
    rank: np.ndarray  # (T,) int64, position inside the group
    group: np.ndarray  # (T,) int64, event index inside the window
    channel: np.ndarray  # (T,) int64
    active: np.ndarray  # (T,) bool

    @property
    def n_tokens(self) -> int:
        return int(self.features.shape[0])

    @property
    def empty(self) -> bool:
        """True when the window had no contraction event (T == 0)."""
        return self.n_tokens == 0


@dataclass(frozen=True)
class TokenBatch:
    """Windows padded to a common length T: arrays (B, T, ...); padding entries are zero.

    `mask` is True for real tokens. Padding is zero in every array (rank/group/channel too, so
    they stay valid embedding indices): only `mask` tells padding apart.
    """

    features: np.ndarray  # (B, T, F) float32
    coords: np.ndarray  # (B, T, 3) float32
    onset_s: np.ndarray  # (B, T) float32
    duration_s: np.ndarray  # (B, T) float32
    rank: np.ndarray  # (B, T) int64
    group: np.ndarray  # (B, T) int64
    channel: np.ndarray  # (B, T) int64
    active: np.ndarray  # (B, T) bool
    mask: np.ndarray  # (B, T) bool, True = real token
    n_tokens: np.ndarray  # (B,) int64

    @classmethod
    def collate(cls, windows: list[WindowTokens], max_tokens: int | None = None) -> "TokenBatch":
        """Pad windows to the longest one (at least 1 slot); keep the first `max_tokens` tokens of longer ones.

        Tokens are in (group, rank) order, so truncation keeps the earliest groups whole and, of
        the last kept group, its earliest-ranked tokens.
        """
        if not windows:
            raise ValueError("cannot collate an empty list of windows")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if len({w.features.shape[1] for w in windows}) != 1:
            raise ValueError("windows have different feature sizes; were they made with the same TokenConfig?")
        limit = max_tokens if max_tokens is not None else max(w.n_tokens for w in windows)
        n_tokens = np.array([min(w.n_tokens, limit) for w in windows], dtype=np.int64)
        width = max(1, int(n_tokens.max()))
        padded = {}
        for field in fields(WindowTokens):
            sample = getattr(windows[0], field.name)
            out = np.zeros((len(windows), width, *sample.shape[1:]), dtype=sample.dtype)
            for row, (window, n) in enumerate(zip(windows, n_tokens)):
                out[row, :n] = getattr(window, field.name)[:n]
            padded[field.name] = out
        mask = np.arange(width)[None, :] < n_tokens[:, None]
        return cls(**padded, mask=mask, n_tokens=n_tokens)


def tokenize_window(x: np.ndarray, fs: float, positions: np.ndarray, source_fs: float,
                    channel_ok: np.ndarray | None = None, ev_cfg: EventConfig | None = None,
                    tok_cfg: TokenConfig | None = None, floor: np.ndarray | None = None) -> WindowTokens:
    """Detect the events of a window `x` (n_samples, n_channels) at `fs` and turn them into tokens.

    positions: (n_channels, 3) canonical electrode coordinates. source_fs: the recording device's
    original rate. channel_ok: (n_channels,) bool, False = bad channel (no token). floor: a
    recording-level noise floor (n_channels,), or None to estimate it from this window.
    """
    tok_cfg = tok_cfg or TokenConfig()
    x = np.asarray(x, dtype=np.float32)
    events = detect_events(x, fs, ev_cfg, channel_ok=channel_ok, floor=floor)  # also validates x
    positions = np.asarray(positions, dtype=np.float32)
    if positions.shape != (x.shape[1], 3):
        raise ValueError(f"positions must have shape ({x.shape[1]}, 3), got {positions.shape}")
    if not (math.isfinite(source_fs) and source_fs > 0):
        raise ValueError(f"source_fs must be a positive number, got {source_fs!r}")
    nyquist = min(source_fs, fs) / 2
    tokens = _ordered_tokens(_event_features(x, fs, events, nyquist, tok_cfg), fs, events, positions, tok_cfg)
    if not tok_cfg.window_summary:
        return tokens
    whole = _whole_window(events, x.shape[0])
    summary = _ordered_tokens(_event_features(x, fs, whole, nyquist, tok_cfg), fs, whole, positions,
                              replace(tok_cfg, include_quiet=True))
    return WindowTokens(**{f.name: np.concatenate([getattr(summary, f.name), getattr(tokens, f.name)
                                                   + (1 if f.name == "group" else 0)])
                           for f in fields(WindowTokens)})


def _whole_window(events: Events, n_samples: int) -> Events:
    """One pseudo-event spanning the window: a channel is active if it is active in any event, from its first
    onset to its last offset."""
    active = events.active.any(axis=0)
    onset = np.where(active, np.where(events.active, events.channel_onset, n_samples).min(axis=0, initial=n_samples), 0)
    offset = np.where(active, np.where(events.active, events.channel_offset, 0).max(axis=0, initial=0), n_samples)
    return replace(events, onset=np.array([0]), offset=np.array([n_samples]), chunk=np.array([0]),
                   active=active[None, :], channel_onset=onset[None, :], channel_offset=offset[None, :])


def _event_features(x: np.ndarray, fs: float, events: Events, nyquist: float, cfg: TokenConfig) -> np.ndarray:
    """Features of every (event, channel) pair, (E, C, F) float32, in `feature_names` order."""
    step = round(fs / events.env_fs)
    span = (events.offset - events.onset).astype(np.float64)  # event duration in samples
    first_block = events.onset // step
    end_block = -(-events.offset // step)  # ceil: one past the last envelope point touching the event

    # Envelope peak per (event, channel): max-reduce over the [first_block, end_block) pairs and
    # keep the even results (odd ones span the gaps between events). The repeated last row keeps
    # end_block == n_env a valid reduceat index.
    bounds = np.column_stack([first_block, end_block]).ravel()
    peak = np.maximum.reduceat(np.vstack([events.env, events.env[-1:]]), bounds, axis=0)[::2].astype(np.float64)

    # Envelope morphology: linear interpolation of the envelope at the centres of L equal sub-spans
    # (envelope point k sits at the centre of its block), clipped to the event's own envelope
    # points so it never exceeds the peak.
    centres = events.onset[:, None] + (np.arange(cfg.n_envelope_points) + 0.5) * span[:, None] / cfg.n_envelope_points
    position = np.clip(centres / step - 0.5, first_block[:, None], (end_block - 1)[:, None])
    left = np.floor(position).astype(np.int64)
    weight = (position - left)[..., None]
    right = np.minimum(left + 1, events.env.shape[0] - 1)
    morphology = (events.env[left] * (1 - weight) + events.env[right] * weight).transpose(0, 2, 1)  # (E, C, L)
    morphology = morphology / (peak[..., None] + _EPS)

    stats = _signal_stats(x, events.onset, events.offset, fs, nyquist, cfg.n_bands)
    rms, spectral = stats[..., 0], stats[..., 1:]
    own_span = (events.channel_offset - events.channel_onset).astype(np.float64)
    active = events.active.astype(np.float64)
    per_token = np.stack([
        np.log(peak + _EPS),
        np.log(rms + _EPS),
        np.log((peak + _EPS) / (events.floor + _EPS)),
        np.log(own_span / fs),
        active,
        (events.channel_onset - events.onset[:, None]) / span[:, None],
        active * own_span / span[:, None],
        np.argmax(morphology, axis=2) / (cfg.n_envelope_points - 1),
    ], axis=2)
    return np.concatenate([morphology, per_token, spectral], axis=2).astype(np.float32)


def _signal_stats(x: np.ndarray, onset: np.ndarray, offset: np.ndarray, fs: float, nyquist: float,
                  n_bands: int) -> np.ndarray:
    """(E, C, 1 + n_bands + 4) signal statistics of every event span: RMS, band powers, centroid, median, ZC, WL.

    Events are zero-padded to a fast FFT size (at least two bins per band, so very short events
    stay well defined) and processed in batches of equal size: a handful of vectorized FFTs per
    window instead of one per event.
    """
    n_samples, n_channels = x.shape
    length = offset - onset
    fft_size = _fft_sizes(np.maximum(length, 2 * n_bands * fs / nyquist))
    # Channel-major copy with zeros after the end: every event's FFT-sized segment is one contiguous slice.
    padded = np.zeros((n_channels, n_samples + int(fft_size.max(initial=0))), dtype=np.float32)
    padded[:, :n_samples] = x.T
    stats = np.zeros((onset.shape[0], n_channels, 5 + n_bands), dtype=np.float32)
    for n_fft in np.unique(fft_size):
        segment_at = sliding_window_view(padded, n_fft, axis=1)  # (C, start, n_fft), a view
        same_size = np.flatnonzero(fft_size == n_fft)
        for batch in np.array_split(same_size, math.ceil(same_size.size * n_channels * n_fft / _BATCH_ELEMENTS)):
            inside = np.arange(n_fft) < length[batch, None]
            segments = segment_at[:, onset[batch]] * inside  # (C, B, n_fft), zero after each event's end
            stats[batch] = _batch_stats(segments, length[batch], fs, nyquist, n_bands).transpose(1, 0, 2)
    return stats


def _fft_sizes(n: np.ndarray) -> np.ndarray:
    """Smallest power of two, or three quarters of one, >= n: fast FFT sizes with at most 33 % padding."""
    power = 2 ** np.ceil(np.log2(n)).astype(np.int64)
    return np.where(3 * power // 4 >= n, 3 * power // 4, power)


def _batch_stats(segments: np.ndarray, length: np.ndarray, fs: float, nyquist: float, n_bands: int) -> np.ndarray:
    """Statistics of zero-padded segments (C, B, n_fft) with B event lengths -> (C, B, 1 + n_bands + 4).

    Frequencies are fractions of the valid Nyquist; bins above it are ignored and so is DC (a
    short segment's mean is an offset, not muscle activity).
    """
    n_fft = segments.shape[-1]
    spectrum = fft.rfft(segments, axis=-1)
    fraction = np.arange(spectrum.shape[-1]) * (fs / n_fft) / nyquist
    n_valid = np.searchsorted(fraction, 1.0, side="right")
    spectrum, fraction = spectrum[..., 1:n_valid], fraction[1:n_valid]
    power = spectrum.real ** 2 + spectrum.imag ** 2

    cumulative = np.zeros((*power.shape[:-1], power.shape[-1] + 1), dtype=power.dtype)
    np.cumsum(power, axis=-1, out=cumulative[..., 1:])
    total = cumulative[..., -1] + _EPS
    band_edges = np.searchsorted(fraction, np.linspace(0.0, 1.0, n_bands + 1), side="right")
    bands = np.diff(cumulative[..., band_edges], axis=-1) / total[..., None]
    centroid = power @ fraction / total
    median = fraction[np.argmax(cumulative[..., 1:] >= 0.5 * total[..., None], axis=-1)]

    rms = np.sqrt(np.einsum("cbt,cbt->cb", segments, segments) / length)
    steps = np.abs(np.diff(segments, axis=-1))
    padded_events = np.flatnonzero(length < n_fft)
    steps[:, padded_events, length[padded_events] - 1] = 0.0  # the padding's false step from the last sample to 0
    n_steps = np.maximum(length - 1, 1)
    signs = np.signbit(segments)
    real_crossing = (signs[..., 1:] != signs[..., :-1]) & (steps > _ZC_DEAD_ZONE * rms[..., None])
    zero_crossings = np.count_nonzero(real_crossing, axis=-1) * fs / n_steps / (2 * nyquist)
    waveform_length = steps.sum(axis=-1) / n_steps / (rms + _EPS) * fs / (4 * math.sqrt(2) * nyquist)
    summary = np.stack([centroid, median, zero_crossings, waveform_length], axis=-1)
    return np.concatenate([rms[..., None], bands, summary], axis=-1)


def _ordered_tokens(features: np.ndarray, fs: float, events: Events, positions: np.ndarray,
                    cfg: TokenConfig) -> WindowTokens:
    """Select the (event, channel) pairs that become tokens and put them in (group, rank) order."""
    active = events.active
    group, channel = np.nonzero(events.channel_ok[None, :] & (active | cfg.include_quiet))
    is_active = active[group, channel]
    onset = events.channel_onset[group, channel]
    log_rms = features[group, channel, feature_names(cfg).index("log_rms")]
    # Inside a group: active tokens by onset, then quiet ones by amplitude descending; ties by channel.
    within_key = np.where(is_active, onset, -log_rms)
    order = np.lexsort((channel, within_key, ~is_active, group))
    group, channel, is_active, onset = group[order], channel[order], is_active[order], onset[order]
    rank = np.arange(group.shape[0]) - np.searchsorted(group, group)  # group is sorted
    duration = events.channel_offset[group, channel] - onset
    return WindowTokens(
        features=features[group, channel],
        coords=positions[channel],
        onset_s=(onset / fs).astype(np.float32),
        duration_s=(duration / fs).astype(np.float32),
        rank=rank.astype(np.int64),
        group=group.astype(np.int64),
        channel=channel.astype(np.int64),
        active=is_active,
    )
