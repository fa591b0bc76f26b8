"""Contraction-event detection: hysteresis rules on hand-made envelopes, grouping across channels,
and onset accuracy on synthetic bursts with known onsets."""

from __future__ import annotations

import numpy as np
import pytest

from aemg_dist.events import EventConfig, active_intervals, detect_events, envelope, noise_floor, onset_f1

FS = 1000.0


def shaped_noise(rng: np.random.Generator, n: int, n_channels: int, fs: float, band: tuple[float, float],
                 exponent: float = 0.0) -> np.ndarray:
    """Unit-variance Gaussian noise with power spectrum ~ f^-exponent inside `band` and nothing outside."""
    spectrum = np.fft.rfft(rng.standard_normal((n, n_channels)), axis=0)
    freq = np.fft.rfftfreq(n, 1.0 / fs)
    gain = np.where((freq >= band[0]) & (freq <= band[1]), np.maximum(freq, 1.0) ** (-exponent / 2), 0.0)
    out = np.fft.irfft(spectrum * gain[:, None], n, axis=0)
    return out / out.std(axis=0)


def burst_recording(snr_db: float, seconds: float = 60.0, n_channels: int = 4, noise: str = "white",
                    band: tuple[float, float] = (20.0, 450.0), seed: int = 0,
                    fs: float = FS) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic EMG: band-limited noise bursts (0.3-0.8 s, 50 ms raised-cosine ramps) on background noise.

    Each burst drives a random non-empty subset of channels, each with its own onset delay of up
    to 20 ms. SNR is the burst plateau power over the noise power, per channel; the noise is
    "white" or "pink" (1/f) inside the same band, as a band-passed recording's would be.
    Returns x (n, n_channels) float32 and the burst onsets in samples (first channel's ramp start).
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * fs)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, int(0.05 * fs)))
    modulation = np.zeros((n, n_channels))
    onsets = []
    t = 1.0
    while t < seconds - 2.0:
        length = int(rng.uniform(0.3, 0.8) * fs)
        shape = np.concatenate([ramp, np.ones(length), ramp[::-1]])
        channels = np.flatnonzero(rng.random(n_channels) < 0.7)
        channels = channels if channels.size else rng.integers(n_channels, size=1)
        delays = rng.integers(0, int(0.02 * fs), size=channels.size)
        start = int(t * fs)
        for channel, delay in zip(channels, delays):
            modulation[start + delay:start + delay + shape.size, channel] = shape
        onsets.append(start + delays.min())
        t += (shape.size + 0.02 * fs) / fs + rng.uniform(0.6, 1.5)
    exponent = {"white": 0.0, "pink": 1.0}[noise]
    bursts = shaped_noise(rng, n, n_channels, fs, band) * modulation * 10 ** (snr_db / 20)
    x = bursts + shaped_noise(rng, n, n_channels, fs, band, exponent)
    return x.astype(np.float32), np.array(onsets)


def square_bursts(n: int, spans: list[list[tuple[int, int]]], low: float = 1.0, high: float = 10.0) -> np.ndarray:
    """A +-amplitude square wave of period 4 samples: `high` inside each channel's spans, `low` elsewhere.

    x^2, |x| and the TKEO are then piecewise constant, so with a 1 ms envelope step and window the
    envelope equals the amplitude exactly and every interval edge is known to the sample.
    """
    amplitude = np.full((n, len(spans)), low)
    for channel, channel_spans in enumerate(spans):
        for start, stop in channel_spans:
            amplitude[start:stop, channel] = high
    sign = np.where(np.arange(n) % 4 < 2, 1.0, -1.0)[:, None]
    return (amplitude * sign).astype(np.float32)


EXACT = EventConfig(step_ms=1.0, window_ms=1.0, min_duration_ms=20.0, merge_gap_ms=30.0, max_event_ms=1000.0)


def intervals_of(env_rows: list[float], cfg: EventConfig = EXACT) -> list[tuple[int, int]]:
    """Intervals of a single-channel envelope with floor 1 at env_fs 1 kHz (1 point = 1 ms)."""
    env = np.asarray(env_rows, dtype=np.float32)[:, None]
    found = active_intervals(env, np.ones(1, dtype=np.float32), 1000.0, cfg)
    return list(zip(found.start.tolist(), found.stop.tolist()))


def test_hysteresis_starts_where_envelope_rises_above_low_and_ends_where_it_falls_below():
    env = np.ones(300)
    env[100:200] = 1.6  # above low (1.3) only
    env[130:160] = 5.0  # reaches high (2.0)
    env[250:280] = 1.6  # above low but never high: not activity
    assert intervals_of(env) == [(100, 200)]


def test_min_duration_drops_a_blip():
    env = np.ones(400)
    env[50:60] = 5.0  # 10 ms blip
    env[200:260] = 5.0  # 60 ms burst
    assert intervals_of(env) == [(200, 260)]


def test_gap_merging_joins_close_bursts_only():
    env = np.ones(600)
    env[100:150] = env[170:220] = 5.0  # 20 ms gap <= 30 ms: one interval
    env[400:450] = env[490:540] = 5.0  # 40 ms gap: two
    assert intervals_of(env) == [(100, 220), (400, 450), (490, 540)]


def test_merged_blips_can_pass_min_duration_together():
    env = np.ones(300)
    env[100:112] = env[130:142] = 5.0  # two 12 ms blips, 18 ms apart: 42 ms once merged
    assert intervals_of(env) == [(100, 142)]


def test_bad_channels_have_no_intervals():
    env = np.ones((200, 2), dtype=np.float32)
    env[50:150] = 5.0
    found = active_intervals(env, np.ones(2, dtype=np.float32), 1000.0, EXACT, channel_ok=np.array([True, False]))
    assert found.channel.tolist() == [0]


def test_burst_at_window_start_starts_at_zero_and_ongoing_burst_ends_at_last_sample():
    n = 2000
    x = square_bursts(n, [[(0, 300), (1700, n)]])
    events = detect_events(x, FS, EXACT)
    assert events.onset.tolist() == [0, 1700]
    assert events.offset.tolist() == [300, n]  # half-open: the event covers the last sample n - 1


@pytest.mark.parametrize("kind", ["rms", "lowpass", "tkeo"])
def test_edges_at_both_ends_hold_for_every_envelope_kind(kind):
    n = 3000
    x = square_bursts(n, [[(0, 400), (2500, n)]])
    events = detect_events(x, FS, EventConfig(envelope=kind))
    assert events.onset[0] == 0 and events.offset[-1] == n
    assert events.n_events == 2


def test_max_event_splits_a_hold_into_contiguous_chunks():
    n = 4000
    x = square_bursts(n, [[(500, 3500)]])  # a 3 s hold
    events = detect_events(x, FS, EXACT)
    lengths = events.offset - events.onset
    assert events.n_events == 3 and np.all(lengths <= 1000)
    assert events.onset[0] == 500 and events.offset[-1] == 3500
    assert np.array_equal(events.onset[1:], events.offset[:-1])
    assert events.chunk.tolist() == [0, 1, 2]
    assert events.active.all()


def test_overlapping_activity_across_channels_forms_one_event():
    x = square_bursts(1500, [[(100, 300)], [(250, 500)], [(800, 900)]])
    events = detect_events(x, FS, EXACT)
    assert list(zip(events.onset.tolist(), events.offset.tolist())) == [(100, 500), (800, 900)]
    assert events.active.tolist() == [[True, True, False], [False, False, True]]
    assert events.channel_onset[0, :2].tolist() == [100, 250]
    assert events.channel_offset[0, :2].tolist() == [300, 500]
    # A quiet channel spans the whole event.
    assert (events.channel_onset[0, 2], events.channel_offset[0, 2]) == (100, 500)


def test_a_channel_bridging_two_bursts_joins_them_into_one_event():
    x = square_bursts(1500, [[(100, 300), (600, 800)], [(250, 700)]])
    events = detect_events(x, FS, EXACT)
    assert list(zip(events.onset.tolist(), events.offset.tolist())) == [(100, 800)]
    # Channel 0 fired twice inside the event: it spans from its first onset to its last offset.
    assert (events.channel_onset[0, 0], events.channel_offset[0, 0]) == (100, 800)


def test_bad_channel_activity_creates_no_event():
    x = square_bursts(1000, [[], [(200, 500)]])
    events = detect_events(x, FS, EXACT, channel_ok=np.array([True, False]))
    assert events.n_events == 0 and events.active.shape == (0, 2)


def test_provided_floor_is_used():
    x = square_bursts(1000, [[(200, 500)]])
    assert detect_events(x, FS, EXACT).n_events == 1
    assert detect_events(x, FS, EXACT, floor=np.array([100.0])).n_events == 0


def test_noise_floor_methods_track_the_rest_level():
    x, _ = burst_recording(20.0, seconds=30.0, seed=3)
    cfg = EventConfig()
    env, _ = envelope(x, FS, cfg)
    rest_level = np.sqrt(np.mean(x[:900] ** 2, axis=0))  # the first second is rest
    for method in ("percentile", "quiet_mad"):
        floor = noise_floor(env, EventConfig(floor_method=method))
        assert np.all((floor > 0.7 * rest_level) & (floor < 1.3 * rest_level)), method


MYO_BAND = (20.0, 95.0)  # a 200 Hz device resampled to the corpus rate: narrowband, noisier envelope


@pytest.mark.parametrize("snr_db, noise, band", [
    (10.0, "white", (20.0, 450.0)), (20.0, "white", (20.0, 450.0)), (10.0, "pink", (20.0, 450.0)),
    (10.0, "white", MYO_BAND), (20.0, "pink", MYO_BAND),
])
def test_onsets_on_synthetic_bursts(snr_db, noise, band):
    # 8 channels, like a Myo armband: an event's onset is its earliest channel's, and with
    # narrowband content one channel alone detects onsets ~15 ms late at 10 dB.
    x, onsets = burst_recording(snr_db, n_channels=8, noise=noise, band=band, seed=1)
    events = detect_events(x, FS)
    precision, recall, f1 = onset_f1(onsets, events.onset[events.chunk == 0], tolerance=0.025 * FS)
    assert f1 >= 0.9, (precision, recall)


@pytest.mark.parametrize("fs, band", [(200.0, MYO_BAND), (2048.0, (20.0, 450.0))])
def test_onsets_at_other_corpus_rates(fs, band):
    x, onsets = burst_recording(15.0, n_channels=8, band=band, fs=fs, seed=1)
    events = detect_events(x, fs)
    assert onset_f1(onsets, events.onset[events.chunk == 0], tolerance=0.025 * fs)[2] >= 0.9


@pytest.mark.parametrize("kind", ["lowpass", "tkeo"])
def test_other_envelope_kinds_find_the_onsets(kind):
    x, onsets = burst_recording(20.0, seed=2)
    events = detect_events(x, FS, EventConfig(envelope=kind))
    assert onset_f1(onsets, events.onset[events.chunk == 0], tolerance=0.025 * FS)[2] >= 0.9


def test_pure_noise_has_no_events():
    rng = np.random.default_rng(0)
    for noise_exponent in (0.0, 1.0):
        x = shaped_noise(rng, 30_000, 4, FS, (20.0, 450.0), noise_exponent).astype(np.float32)
        assert detect_events(x, FS).n_events == 0


def test_onset_f1_matches_one_to_one():
    assert onset_f1([100, 200], [101, 102, 199], tolerance=5) == pytest.approx((2 / 3, 1.0, 0.8))
    assert onset_f1([100], [], tolerance=5) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("bad", [
    dict(envelope="hilbert"), dict(high=1.0, low=2.0), dict(min_duration_ms=-1.0), dict(step_ms=0.0),
    dict(floor_percentile=100.0), dict(cutoff_hz=150.0), dict(max_event_ms=1.0), dict(window_ms=float("nan")),
    dict(floor_method="mean"), dict(floor_quiet_fraction=0.0),
])
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        EventConfig(**bad)


def test_detect_rejects_bad_shapes():
    x = np.zeros((100, 2), dtype=np.float32)
    with pytest.raises(ValueError):
        detect_events(x[:, 0], FS)
    with pytest.raises(ValueError):
        detect_events(x, FS, channel_ok=np.ones(3, dtype=bool))
    with pytest.raises(ValueError):
        detect_events(x, 0.0)
