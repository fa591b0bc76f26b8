"""The vectorized tokenizer against a plain per-(event, channel) computation of every feature.

`tokenize_window` and `tokenize_windows` compute span statistics by segment reductions over a
stack of windows; the reference below recomputes each token from the event spans of
`detect_events` with one loop iteration per token, the formulas of the module docstring written
out (zero-padded FFT per span, direct sums over the span's samples). Cases cover events that
touch the window end, very short events, 200 Hz-content signals, several FFT size classes,
window summaries, bad channels, and window-level versus recording-level floors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from aemg_dist import tokens as tokens_module
from aemg_dist.events import EventConfig, Events, detect_events
from aemg_dist.tokens import TokenConfig, WindowTokens, tokenize_window, tokenize_windows
from test_events import FS, shaped_noise

FIELDS = ("features", "coords", "onset_s", "duration_s", "rank", "group", "channel", "active")
SHORT = EventConfig(step_ms=1.0, window_ms=5.0, min_duration_ms=3.0, merge_gap_ms=0.0, max_event_ms=150.0)


def fft_size(n: float) -> int:
    """Smallest power of two, or three quarters of one, >= n."""
    power = 2 ** math.ceil(math.log2(n))
    return 3 * power // 4 if 3 * power // 4 >= n else power


def span_features(x: np.ndarray, env: np.ndarray, step: int, onset: int, offset: int, floor: float, nyquist: float,
                  cfg: TokenConfig) -> list[float]:
    """Envelope, amplitude and signal features of one channel over [onset, offset) (not the per-token timing)."""
    first, end = onset // step, -(-offset // step)
    peak = float(env[first:end].max())
    length = offset - onset
    centres = onset + (np.arange(cfg.n_envelope_points) + 0.5) * length / cfg.n_envelope_points
    position = np.clip(centres / step - 0.5, first, end - 1)
    morphology = np.interp(position, np.arange(env.shape[0]), env) / (peak + 1e-6)

    segment = x[onset:offset].astype(np.float64)
    rms = math.sqrt(np.mean(segment ** 2))
    steps = np.abs(np.diff(segment))
    n_steps = max(length - 1, 1)
    crossings = np.count_nonzero((np.signbit(segment[1:]) != np.signbit(segment[:-1])) & (steps > 0.05 * rms))
    n_fft = fft_size(max(length, 2 * cfg.n_bands * FS / nyquist))
    power = np.abs(np.fft.rfft(segment, n_fft)) ** 2
    fraction = np.arange(power.size) * (FS / n_fft) / nyquist  # of the valid Nyquist; DC and bins above it dropped
    keep = (fraction > 0) & (fraction <= 1.0)
    power, fraction = power[keep], fraction[keep]
    total = power.sum() + 1e-6
    edges = np.linspace(0.0, 1.0, cfg.n_bands + 1)
    bands = [power[(fraction > lo) & (fraction <= hi)].sum() / total for lo, hi in zip(edges, edges[1:])]
    median = fraction[np.argmax(np.cumsum(power) >= 0.5 * total)]
    return [*morphology, math.log(peak + 1e-6), math.log(rms + 1e-6), math.log((peak + 1e-6) / (floor + 1e-6)),
            *bands, float(power @ fraction / total), float(median), crossings * FS / n_steps / (2 * nyquist),
            float(steps.sum()) / n_steps / (rms + 1e-6) * FS / (4 * math.sqrt(2) * nyquist)]


def reference_group(x: np.ndarray, events: Events, onset: int, offset: int, active: np.ndarray,
                    channel_onset: np.ndarray, channel_offset: np.ndarray, nyquist: float, cfg: TokenConfig,
                    include_quiet: bool) -> list[tuple]:
    """(channel, active, features, onset, duration) of one group's tokens, in rank order."""
    step = round(FS / events.env_fs)
    rows = []
    for c in np.flatnonzero(events.channel_ok):
        if not (active[c] or include_quiet):
            continue
        values = span_features(x[:, c], events.env[:, c], step, onset, offset, float(events.floor[c]), nyquist, cfg)
        own = channel_offset[c] - channel_onset[c]
        timing = [math.log(own / FS), float(active[c]), (channel_onset[c] - onset) / (offset - onset),
                  float(active[c]) * own / (offset - onset),
                  int(np.argmax(values[:cfg.n_envelope_points])) / (cfg.n_envelope_points - 1)]
        L = cfg.n_envelope_points
        features = values[:L + 3] + timing + values[L + 3:]
        rows.append((int(c), bool(active[c]), features, int(channel_onset[c]), int(own)))
    # active by onset, then quiet by log_rms descending; ties by channel
    return sorted(rows, key=lambda r: (not r[1], r[3] if r[1] else -r[2][cfg.n_envelope_points + 1], r[0]))


def reference_tokens(x: np.ndarray, positions: np.ndarray, source_fs: float, channel_ok: np.ndarray | None,
                     ev_cfg: EventConfig, cfg: TokenConfig, floor: np.ndarray | None) -> dict[str, np.ndarray]:
    events = detect_events(x, FS, ev_cfg, channel_ok=channel_ok, floor=floor)
    nyquist = min(source_fs, FS) / 2
    groups = []
    if cfg.window_summary:
        any_active = events.active.any(axis=0)
        first = np.where(events.active, events.channel_onset, x.shape[0]).min(axis=0, initial=x.shape[0])
        last = np.where(events.active, events.channel_offset, 0).max(axis=0, initial=0)
        groups.append(reference_group(x, events, 0, x.shape[0], any_active, np.where(any_active, first, 0),
                                      np.where(any_active, last, x.shape[0]), nyquist, cfg, True))
    for e in range(events.n_events):
        groups.append(reference_group(x, events, events.onset[e], events.offset[e], events.active[e],
                                      events.channel_onset[e], events.channel_offset[e], nyquist, cfg,
                                      cfg.include_quiet))
    rows = [(g, rank, *row) for g, group in enumerate(groups) for rank, row in enumerate(group)]
    n_features = len(tokens_module.feature_names(cfg))
    return {"features": np.array([r[4] for r in rows], dtype=np.float64).reshape(-1, n_features),
            "coords": positions[[r[2] for r in rows]].reshape(-1, 3),
            "onset_s": np.array([r[5] / FS for r in rows]), "duration_s": np.array([r[6] / FS for r in rows]),
            "rank": np.array([r[1] for r in rows]), "group": np.array([r[0] for r in rows]),
            "channel": np.array([r[2] for r in rows]), "active": np.array([r[3] for r in rows], dtype=bool)}


def assert_matches(tokens: WindowTokens, expected: dict[str, np.ndarray]) -> None:
    for name in FIELDS:
        value = getattr(tokens, name)
        if name in ("features", "coords", "onset_s", "duration_s"):
            assert value.dtype == np.float32, name
            # float32 tolerance
            np.testing.assert_allclose(value, expected[name], rtol=2e-4, atol=2e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(value, expected[name], err_msg=name)


def random_recording(seed: int, n: int, n_channels: int, band: tuple[float, float]) -> np.ndarray:
    """Band-limited noise with bursts of random length (5 ms to 1.5 s), some running to the end."""
    rng = np.random.default_rng(seed)
    gain = np.ones((n, n_channels))
    for _ in range(rng.integers(12, 20)):
        channel = rng.integers(n_channels)
        length = int(rng.choice([5, 12, 40, 90, 300, 700, 1500]))
        start = int(rng.integers(0, n - 5)) if rng.random() < 0.8 else n - length // 2
        gain[max(start, 0):start + length, channel] = rng.uniform(3.0, 12.0)
    return (shaped_noise(rng, n, n_channels, FS, band) * gain).astype(np.float32)


CASES = [  # (seed, band, source_fs, event config, token config, floor from the recording, bad channel)
    (0, (20.0, 450.0), 1000.0, EventConfig(), TokenConfig(), True, None),
    (1, (20.0, 95.0), 200.0, EventConfig(), TokenConfig(window_summary=True), True, 2),
    (2, (20.0, 450.0), 2000.0, SHORT, TokenConfig(n_envelope_points=5, n_bands=3), False, None),
    (3, (20.0, 95.0), 200.0, SHORT, TokenConfig(window_summary=True, include_quiet=False), False, 0),
    (4, (20.0, 450.0), 1000.0, SHORT, TokenConfig(window_summary=True, n_bands=7), True, 3),
    (5, (10.0, 300.0), 600.0, EventConfig(envelope="lowpass", max_event_ms=300.0), TokenConfig(), True, 1),
]


@pytest.mark.parametrize("seed, band, source_fs, ev_cfg, tok_cfg, recording_floor, bad", CASES)
def test_tokens_match_a_plain_per_token_computation(seed, band, source_fs, ev_cfg, tok_cfg, recording_floor, bad):
    n_channels, window = 4, 2000
    x = random_recording(seed, 6 * window + 700, n_channels, band)
    positions = np.random.default_rng(seed).standard_normal((n_channels, 3)).astype(np.float32)
    channel_ok = None if bad is None else np.arange(n_channels) != bad
    floor = None
    if recording_floor:
        floor = detect_events(x, FS, ev_cfg).floor
    # 2 s windows, an overlapping one, a shorter last one and the whole recording as one long window
    starts = list(range(0, 6 * window, window)) + [window // 2]
    windows = [x[a:a + window] for a in starts] + [x[6 * window:], x]
    batched = tokenize_windows(windows, FS, positions, source_fs, channel_ok, ev_cfg, tok_cfg, floor)
    assert len(batched) == len(windows)
    fft_classes, n_events = set(), 0
    for w, tokens in zip(windows, batched):
        expected = reference_tokens(w, positions, source_fs, channel_ok, ev_cfg, tok_cfg, floor)
        assert_matches(tokens, expected)
        assert_matches(tokenize_window(w, FS, positions, source_fs, channel_ok, ev_cfg, tok_cfg, floor), expected)
        events = detect_events(w, FS, ev_cfg, channel_ok=channel_ok, floor=floor)
        fft_classes |= {fft_size(max(n, 2 * tok_cfg.n_bands * FS / (min(source_fs, FS) / 2)))
                        for n in (events.offset - events.onset).tolist()}
        n_events += events.n_events
    assert n_events >= 10 and len(fft_classes) >= 2  # several FFT batches (32 to 1024 points over the cases)


def test_events_touching_the_window_end_and_very_short_events_are_covered():
    x = random_recording(2, 2000, 4, (20.0, 450.0))
    x[1990:, 0] *= 30.0  # a 10 ms burst at the very end
    x[1000:1004, 1] *= 30.0  # a 4 ms one in the middle
    events = detect_events(x, FS, SHORT)
    assert events.offset.max() == 2000 and (events.offset - events.onset).min() <= 10
    for tok_cfg in (TokenConfig(), TokenConfig(window_summary=True)):
        expected = reference_tokens(x, np.zeros((4, 3), np.float32), 1000.0, None, SHORT, tok_cfg, None)
        assert_matches(tokenize_window(x, FS, np.zeros((4, 3)), 1000.0, ev_cfg=SHORT, tok_cfg=tok_cfg), expected)


def test_stacks_and_runs_of_spans_do_not_change_tokens(monkeypatch):
    x = random_recording(7, 20000, 3, (20.0, 450.0))
    windows = [x[a:a + 1000] for a in range(0, 19000, 700)]
    cfg = TokenConfig(window_summary=True)
    whole = tokenize_windows(windows + [x], FS, np.zeros((3, 3)), 1000.0, tok_cfg=cfg)
    # stacks of 3 windows; the long window's spans in runs of at most 3000 samples
    monkeypatch.setattr(tokens_module, "_STACK_ELEMENTS", 3 * 3000)
    stacked = tokenize_windows(windows + [x], FS, np.zeros((3, 3)), 1000.0, tok_cfg=cfg)
    assert sum(t.n_tokens for t in whole) > 0 and whole[-1].group.max() > 10
    for a, b in zip(whole, stacked):
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert tokenize_windows([], FS, np.zeros((3, 3)), 1000.0) == []
    with pytest.raises(ValueError):
        tokenize_windows([x[:0]], FS, np.zeros((3, 3)), 1000.0)
