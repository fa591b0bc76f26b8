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
length in the window, or in all windows of one `tokenize_windows` call).

A window with no event has zero tokens (`WindowTokens.empty`). In a `TokenBatch` it is a row with
`n_tokens == 0` and an all-False mask; every row has at least one slot, so the model can put
its own learned "no activity" token there. Which representation to learn is a model concern.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
from scipy import fft

from .config import check_ranges
from .events import EventConfig, active_intervals, envelope, group_intervals, noise_floor

_EPS = 1e-6  # amplitude floor for logs and ratios; signals are z-scored, so rest is ~1
_ZC_DEAD_ZONE = 0.05  # a zero crossing counts when its step exceeds this fraction of the span's RMS
_STACK_ELEMENTS = 1 << 19  # samples x channels per stack of windows in tokenize_windows: larger ones ran slower (cache)
_BATCH_ELEMENTS = 1 << 22  # samples per vectorized FFT batch (16 MB of float32): bounds memory on 64-channel grids


@dataclass(frozen=True)
class TokenConfig:
    """Token featurization knobs; invalid values raise ValueError at construction."""

    n_envelope_points: int = 16  # L: envelope morphology resolution
    n_bands: int = 4  # relative band powers over (0, valid Nyquist]
    include_quiet: bool = True  # add an inactive token for every quiet (good) channel of each event
    # group 0: one token per good channel over the whole window (module docstring); on by default since issue 14's
    # ablation on the development subjects (against event tokens alone: the gap to the best baseline at 10 % from
    # -0.054 to -0.016, pretrained - scratch +0.04 at 1 and 10 %)
    window_summary: bool = True

    def __post_init__(self) -> None:
        # the upper bounds keep the feature count within the model's (ModelConfig size limits)
        check_ranges(self, n_envelope_points="[2, 128]", n_bands="[1, 64]")


_DEFAULT_TOKENS = TokenConfig()
_DEFAULT_EVENTS = EventConfig()  # validating a config per call costs as much as a small window's features


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


_TOKEN_FIELDS = tuple(f.name for f in fields(WindowTokens))


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
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"a window must be a non-empty (n_samples, n_channels) array, got shape {x.shape}")
    return tokenize_windows(x[None], fs, positions, source_fs, channel_ok, ev_cfg, tok_cfg, floor)[0]


def tokenize_windows(windows: Sequence[np.ndarray] | np.ndarray, fs: float, positions: np.ndarray,
                     source_fs: float, channel_ok: np.ndarray | None = None, ev_cfg: EventConfig | None = None,
                     tok_cfg: TokenConfig | None = None, floor: np.ndarray | None = None) -> list[WindowTokens]:
    """`tokenize_window` of every window of one recording (same channels), in one vectorized pass.

    The tokens are exactly those of calling `tokenize_window` per window (with floor None, each
    window estimates its own floor, as there); the per-call overhead of about a hundred small numpy
    calls is paid once per stack of windows instead of once per window. Windows of equal shape are stacked:
    detection runs on them as extra channels, and features on one time axis holding the windows
    end to end. Windows of different lengths are grouped by shape.
    """
    tok_cfg = tok_cfg or _DEFAULT_TOKENS
    ev_cfg = ev_cfg or _DEFAULT_EVENTS
    shapes = [np.shape(w) for w in windows]
    if len(set(shapes)) > 1:
        by_window: dict[int, WindowTokens] = {}
        for shape in dict.fromkeys(shapes):
            index = [i for i, s in enumerate(shapes) if s == shape]
            same = tokenize_windows(np.stack([windows[i] for i in index]), fs, positions, source_fs, channel_ok,
                                    ev_cfg, tok_cfg, floor)
            by_window.update(zip(index, same))
        return [by_window[i] for i in range(len(shapes))]
    if not shapes:
        return []
    xs = np.asarray(windows, dtype=np.float32)
    if xs.ndim != 3 or 0 in xs.shape[1:]:
        raise ValueError(f"windows must be non-empty (n_samples, n_channels) arrays, got shape {shapes[0]}")
    n_channels = xs.shape[2]
    positions = np.asarray(positions, dtype=np.float32)
    if positions.shape != (n_channels, 3):
        raise ValueError(f"positions must have shape ({n_channels}, 3), got {positions.shape}")
    if not (math.isfinite(source_fs) and source_fs > 0):
        raise ValueError(f"source_fs must be a positive number, got {source_fs!r}")
    nyquist = min(source_fs, fs) / 2
    # Stacks of a few dozen 2 s windows share the per-call overhead while their arrays stay in the CPU
    # cache: 2 MB stacks ran fastest here, 8 MB and larger ones clearly slower per window.
    per_stack = max(1, _STACK_ELEMENTS // (xs.shape[1] * n_channels))
    return [tokens for first in range(0, xs.shape[0], per_stack)
            for tokens in _tokenize_stack(xs[first:first + per_stack], fs, positions, nyquist, channel_ok, ev_cfg,
                                          tok_cfg, floor)]


def _tokenize_stack(xs: np.ndarray, fs: float, positions: np.ndarray, nyquist: float, channel_ok: np.ndarray | None,
                    ev_cfg: EventConfig, tok_cfg: TokenConfig, floor: np.ndarray | None) -> list[WindowTokens]:
    """`tokenize_windows` of a stack of windows xs (W, n, C) (validated) in one pass."""
    spans = _detect(xs, fs, ev_cfg, channel_ok, floor)
    xt = np.ascontiguousarray(xs.reshape(-1, xs.shape[2]).T)  # (C, W * n): every span is a contiguous row slice
    tokens = _ordered_tokens(_event_features(xt, fs, spans, nyquist, tok_cfg), fs, spans, tok_cfg)
    if tok_cfg.window_summary:
        whole = _whole_windows(spans)
        summary = _ordered_tokens(_event_features(xt, fs, whole, nyquist, tok_cfg), fs, whole,
                                  replace(tok_cfg, include_quiet=True))
        # Per window: its summary (group 0) first, then its events as groups 1..E. A stable sort
        # by window of [summary tokens, event tokens] puts them in that order.
        tokens = {name: np.concatenate([summary[name], tokens[name] + (1 if name == "group" else 0)])
                  for name in tokens}
        order = np.argsort(tokens["window"], kind="stable")
        tokens = {name: value[order] for name, value in tokens.items()}
    tokens["coords"] = positions[tokens["channel"]]
    edges = np.searchsorted(tokens["window"], np.arange(xs.shape[0] + 1)).tolist()
    return [WindowTokens(**{name: tokens[name][a:b] for name in _TOKEN_FIELDS}) for a, b in zip(edges, edges[1:])]


@dataclass(frozen=True)
class _Spans:
    """Events (or whole-window pseudo-events) of W windows of n samples laid end to end on one time axis.

    Window w covers samples [w * n, (w + 1) * n) of that axis and envelope points
    [w * n_env, (w + 1) * n_env) of `env`; E spans in time order, so sorted by window too.
    """

    onset: np.ndarray  # (E,) int64, on the joint time axis
    offset: np.ndarray  # (E,) int64
    window: np.ndarray  # (E,) int64
    first: np.ndarray  # (W + 1,) int64, window w holds spans first[w]:first[w + 1]
    active: np.ndarray  # (E, C) bool
    channel_onset: np.ndarray  # (E, C) int64
    channel_offset: np.ndarray  # (E, C) int64
    floors: np.ndarray  # (W, C) float32, each window's noise floor
    env: np.ndarray  # (W * n_env, C) float32
    n_env: int
    n_samples: int  # n
    step: int  # samples per envelope point
    channel_ok: np.ndarray  # (C,) bool


def _detect(xs: np.ndarray, fs: float, cfg: EventConfig, channel_ok: np.ndarray | None,
            floor: np.ndarray | None) -> _Spans:
    """`detect_events` of each window of xs (W, n, C), run once: the windows are stacked as extra channels.

    Envelope, floor and hysteresis are per channel, so channel w * C + c of the stack gives
    channel c of window w exactly what a per-window call gives; the intervals are then grouped
    into events on the joint time axis, where intervals of different windows never overlap.
    """
    n_windows, n_samples, n_channels = xs.shape
    channel_ok = np.ones(n_channels, dtype=bool) if channel_ok is None else np.asarray(channel_ok, dtype=bool)
    if channel_ok.shape != (n_channels,):
        raise ValueError(f"channel_ok must have shape ({n_channels},), got {channel_ok.shape}")
    if floor is not None:
        floor = np.asarray(floor, dtype=np.float32)
        if floor.shape != (n_channels,):
            raise ValueError(f"floor must have shape ({n_channels},), got {floor.shape}")
    stacked = xs.transpose(1, 0, 2).reshape(n_samples, n_windows * n_channels)
    env, env_fs = envelope(stacked, fs, cfg)
    floors = noise_floor(env, cfg) if floor is None else np.tile(floor, n_windows)
    intervals = active_intervals(env, floors, env_fs, cfg, np.tile(channel_ok, n_windows))
    step = round(fs / env_fs)
    window, channel = np.divmod(intervals.channel, n_channels)
    start = window * n_samples + intervals.start * step
    stop = window * n_samples + np.minimum(intervals.stop * step, n_samples)
    onset, offset, _, active, channel_onset, channel_offset = group_intervals(
        start, stop, channel, n_channels, max_len=round(cfg.max_event_ms * fs / 1000.0))
    event_window = onset // n_samples
    n_env = env.shape[0]
    return _Spans(onset, offset, event_window, np.searchsorted(event_window, np.arange(n_windows + 1)),
                  active, channel_onset, channel_offset, floors.reshape(n_windows, n_channels),
                  env.reshape(n_env, n_windows, n_channels).transpose(1, 0, 2).reshape(n_windows * n_env, n_channels),
                  n_env, n_samples, step, channel_ok)


def _whole_windows(spans: _Spans) -> _Spans:
    """One pseudo-event per window spanning it: a channel is active if it is active in any of the window's
    events, from its first onset to its last offset."""
    n_windows, n_channels = spans.floors.shape
    start = np.arange(n_windows) * spans.n_samples
    stop = start + spans.n_samples
    active = np.zeros((n_windows, n_channels), dtype=bool)
    np.logical_or.at(active, spans.window, spans.active)
    onset = np.repeat(stop[:, None], n_channels, axis=1)
    offset = np.repeat(start[:, None], n_channels, axis=1)
    np.minimum.at(onset, spans.window, np.where(spans.active, spans.channel_onset, onset[spans.window]))
    np.maximum.at(offset, spans.window, np.where(spans.active, spans.channel_offset, offset[spans.window]))
    return replace(spans, onset=start, offset=stop, window=np.arange(n_windows), first=np.arange(n_windows + 1),
                   active=active, channel_onset=np.where(active, onset, start[:, None]),
                   channel_offset=np.where(active, offset, stop[:, None]))


def _event_features(xt: np.ndarray, fs: float, spans: _Spans, nyquist: float, cfg: TokenConfig) -> np.ndarray:
    """Features of every (span, channel) pair, (E, C, F) float32, in `feature_names` order; xt (C, W * n)."""
    n_points = cfg.n_envelope_points
    features = np.empty((*spans.active.shape, n_points + 8 + cfg.n_bands + 4), dtype=np.float32)
    if not spans.onset.size:
        return features
    step = spans.step
    span = (spans.offset - spans.onset).astype(np.float64)  # duration in samples
    local_onset = spans.onset - spans.window * spans.n_samples
    first_block = local_onset // step  # in the span's window
    end_block = -(-(local_onset + (spans.offset - spans.onset)) // step)  # ceil: one past the last point touching it
    base = spans.window * spans.n_env  # the window's first envelope point on the joint axis
    peak = _span_reduce(np.maximum, spans.env, base + first_block, base + end_block, axis=0).astype(np.float64)

    # Envelope morphology: linear interpolation of the envelope at the centres of L equal sub-spans
    # (envelope point k sits at the centre of its block), clipped to the span's own envelope
    # points so it never exceeds the peak.
    centres = local_onset[:, None] + (np.arange(n_points) + 0.5) * span[:, None] / n_points
    position = np.clip(centres / step - 0.5, first_block[:, None], (end_block - 1)[:, None])
    left = np.floor(position).astype(np.int64)
    weight = (position - left)[..., None]
    right = np.minimum(left + 1, spans.n_env - 1) + base[:, None]
    left += base[:, None]
    morphology = (spans.env[left] * (1 - weight) + spans.env[right] * weight).transpose(0, 2, 1)  # (E, C, L)
    morphology = morphology / (peak[..., None] + _EPS)

    features[..., :n_points] = morphology
    rms = _span_time_stats(xt, spans.onset, spans.offset, fs, nyquist, out=features[..., -2:])
    own_span = spans.channel_offset - spans.channel_onset
    per_token = features[..., n_points:n_points + 8]
    per_token[..., 0] = np.log(peak + _EPS)
    per_token[..., 1] = np.log(rms + _EPS)
    per_token[..., 2] = np.log((peak + _EPS) / (spans.floors[spans.window] + _EPS))
    per_token[..., 3] = np.log(own_span / fs)
    per_token[..., 4] = spans.active
    per_token[..., 5] = (spans.channel_onset - spans.onset[:, None]) / span[:, None]
    per_token[..., 6] = spans.active * own_span / span[:, None]
    per_token[..., 7] = np.argmax(morphology, axis=2) / (n_points - 1)
    _span_spectra(xt, spans.onset, spans.offset, fs, nyquist, cfg.n_bands, out=features[..., n_points + 8:-2])
    return features


def _span_time_stats(xt: np.ndarray, onset: np.ndarray, offset: np.ndarray, fs: float, nyquist: float,
                     out: np.ndarray) -> np.ndarray:
    """RMS (E, C) of disjoint time-sorted spans [onset, offset) of xt (C, T); writes zero crossings and waveform
    length to out (E, C, 2).

    Spans are taken in runs covering about `_STACK_ELEMENTS` samples x channels (a longer span
    alone), so the per-sample arrays of `_run_time_stats` stay in the CPU cache on long windows.
    """
    rms = np.empty(out.shape[:2])
    limit = max(1, _STACK_ELEMENTS // xt.shape[0])
    first = 0
    while first < onset.shape[0]:
        end = max(first + 1, int(np.searchsorted(offset, onset[first] + limit, side="right")))
        rms[first:end] = _run_time_stats(xt, onset[first:end], offset[first:end], fs, nyquist, out[first:end])
        first = end
    return rms


def _run_time_stats(xt: np.ndarray, onset: np.ndarray, offset: np.ndarray, fs: float, nyquist: float,
                    out: np.ndarray) -> np.ndarray:
    """`_span_time_stats` of one run of spans, by segment reductions over the samples the run covers.

    Both are over the span's length - 1 steps, scaled as the module docstring says; a crossing
    counts when its step exceeds the span's dead zone. A step array's column t is the step from
    sample t to t + 1 (zero after the last sample): a reduction over [onset, offset) includes
    the step leaving the span, which is subtracted.
    """
    origin = onset[0]
    onset, offset = onset - origin, offset - origin
    x = xt[:, origin:origin + offset[-1]]
    steps = np.zeros(x.shape, dtype=np.float32)  # |x[t+1] - x[t]| in float32, as a direct diff gives
    np.abs(np.diff(x, axis=1), out=steps[:, :-1])
    negative = np.signbit(x)
    sign_change = np.zeros(x.shape, dtype=bool)
    np.not_equal(negative[:, 1:], negative[:, :-1], out=sign_change[:, :-1])

    length = offset - onset
    rms = np.sqrt(_span_reduce(np.add, np.square(x), onset, offset, axis=1, dtype=np.float64) / length[:, None])
    n_steps = np.maximum(length - 1, 1)[:, None]
    last_step = offset - 1
    step_sum = _span_reduce(np.add, steps, onset, offset, axis=1, dtype=np.float64) - steps[:, last_step].T
    # Each span's dead zone repeated over its samples (a gap takes the next span's: gaps are not counted).
    dead_zone = (_ZC_DEAD_ZONE * rms).astype(np.float32)
    repeats = np.diff(np.append(onset, x.shape[1]))
    repeats[0] += onset[0]
    counted = (steps > np.repeat(dead_zone.T, repeats, axis=1)) & sign_change
    crossings = _span_reduce(np.add, counted, onset, offset, axis=1, dtype=np.int64) - counted[:, last_step].T
    out[..., 0] = crossings * fs / n_steps / (2 * nyquist)
    out[..., 1] = step_sum / n_steps / (rms + _EPS) * fs / (4 * math.sqrt(2) * nyquist)
    return rms


def _span_reduce(ufunc: np.ufunc, a: np.ndarray, onset: np.ndarray, offset: np.ndarray, axis: int,
                 dtype: type | None = None) -> np.ndarray:
    """`ufunc` reduction of `a` along `axis` over every span [onset, offset) -> (E, other axis).

    One segment reduction for all spans: segments alternate span / gap and the gaps are dropped.
    Spans are in time order and non-empty; a gap may be "negative" (the next span starts
    inside this one's last envelope block), which only changes the dropped gap results. An
    offset at the end is left out: the last segment runs to the end anyway.
    """
    bounds = np.column_stack([onset, offset]).ravel()
    if bounds[-1] == a.shape[axis]:
        bounds = bounds[:-1]
    return np.moveaxis(ufunc.reduceat(a, bounds, axis=axis, dtype=dtype), axis, 0)[::2]


def _span_spectra(xt: np.ndarray, onset: np.ndarray, offset: np.ndarray, fs: float, nyquist: float,
                  n_bands: int, out: np.ndarray) -> None:
    """Band powers, centroid and median frequency of every span into out (E, C, n_bands + 2).

    Spans are zero-padded to a fast FFT size (at least two bins per band, so very short events
    stay well defined) and transformed in batches of equal size: a handful of vectorized FFTs
    per call instead of one per event.
    """
    n_channels = xt.shape[0]
    length = offset - onset
    fft_size = _fft_sizes(np.maximum(length, 2 * n_bands * fs / nyquist))
    for n_fft in np.unique(fft_size).tolist():
        same_size = np.flatnonzero(fft_size == n_fft)
        for batch in np.array_split(same_size, math.ceil(same_size.size * n_channels * n_fft / _BATCH_ELEMENTS)):
            segments = np.zeros((batch.size, n_channels, n_fft), dtype=np.float32)
            for row, (a, b) in enumerate(zip(onset[batch].tolist(), offset[batch].tolist())):
                segments[row, :, :b - a] = xt[:, a:b]
            out[batch] = _spectral_stats(segments, fs, nyquist, n_bands)


def _fft_sizes(n: np.ndarray) -> np.ndarray:
    """Smallest power of two, or three quarters of one, >= n: fast FFT sizes with at most 33 % padding."""
    power = 2 ** np.ceil(np.log2(n)).astype(np.int64)
    return np.where(3 * power // 4 >= n, 3 * power // 4, power)


@functools.lru_cache(maxsize=256)
def _frequency_grid(n_fft: int, fs: float, nyquist: float, n_bands: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(bins up to the valid Nyquist, their frequency as a fraction of it without DC, band edges in those bins)."""
    fraction = np.arange(n_fft // 2 + 1) * (fs / n_fft) / nyquist
    n_valid = int(np.searchsorted(fraction, 1.0, side="right"))
    fraction = fraction[1:n_valid]
    band_edges = np.searchsorted(fraction, np.linspace(0.0, 1.0, n_bands + 1), side="right")
    return n_valid, fraction.astype(np.float32), band_edges


def _spectral_stats(segments: np.ndarray, fs: float, nyquist: float, n_bands: int) -> np.ndarray:
    """Band powers, centroid and median frequency of zero-padded segments (..., n_fft) -> (..., n_bands + 2).

    Frequencies are fractions of the valid Nyquist; bins above it are ignored and so is DC (a
    short segment's mean is an offset, not muscle activity).
    """
    n_valid, fraction, band_edges = _frequency_grid(segments.shape[-1], fs, nyquist, n_bands)
    spectrum = fft.rfft(segments, axis=-1)[..., 1:n_valid]
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    cumulative = np.zeros((*power.shape[:-1], power.shape[-1] + 1), dtype=power.dtype)
    np.cumsum(power, axis=-1, out=cumulative[..., 1:])
    total = cumulative[..., -1] + _EPS
    stats = np.empty((*power.shape[:-1], n_bands + 2), dtype=np.float32)
    stats[..., :n_bands] = np.diff(cumulative[..., band_edges], axis=-1) / total[..., None]
    stats[..., n_bands] = power @ fraction / total
    stats[..., n_bands + 1] = fraction[np.argmax(cumulative[..., 1:] >= 0.5 * total[..., None], axis=-1)]
    return stats


def _ordered_tokens(features: np.ndarray, fs: float, spans: _Spans, cfg: TokenConfig) -> dict[str, np.ndarray]:
    """Select the (span, channel) pairs that become tokens and put them in (window, group, rank) order.

    Returns the `WindowTokens` fields but coords, for all windows, plus each token's `window`.
    """
    group, channel = np.nonzero(spans.channel_ok[None, :] & (spans.active | cfg.include_quiet))
    is_active = spans.active[group, channel]
    onset = spans.channel_onset[group, channel]
    log_rms = features[group, channel, cfg.n_envelope_points + 1]  # feature_names: env_*, log_peak, log_rms
    # Inside a group: active tokens by onset, then quiet ones by amplitude descending; ties by channel.
    within_key = np.where(is_active, onset, -log_rms)
    order = np.lexsort((channel, within_key, ~is_active, group))
    group, channel, is_active, onset = group[order], channel[order], is_active[order], onset[order]
    rank = np.arange(group.shape[0]) - np.searchsorted(group, group)  # group is sorted
    duration = spans.channel_offset[group, channel] - onset
    window = spans.window[group]
    return {
        "features": features[group, channel],
        "onset_s": ((onset - window * spans.n_samples) / fs).astype(np.float32),
        "duration_s": (duration / fs).astype(np.float32),
        "rank": rank.astype(np.int64),
        "group": (group - spans.first[window]).astype(np.int64),
        "channel": channel.astype(np.int64),
        "active": is_active,
        "window": window,
    }
