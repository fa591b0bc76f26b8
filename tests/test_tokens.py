"""Neuromuscular tokens: feature layout, quiet and bad channels, recruitment order, spectral
normalization to the source Nyquist, empty windows and batch collation."""

from __future__ import annotations

import numpy as np
import pytest

from aemg_dist.events import detect_events
from aemg_dist.tokens import TokenBatch, TokenConfig, WindowTokens, feature_names, tokenize_window
from test_events import EXACT, FS, shaped_noise, square_bursts


def ring(n_channels: int) -> np.ndarray:
    angle = 2 * np.pi * np.arange(n_channels) / n_channels
    return np.column_stack([np.cos(angle), np.sin(angle), np.zeros(n_channels)]).astype(np.float32)


# most tests here pin the event groups themselves; the summary group (on by default) has its own tests at the end
EVENTS_ONLY = TokenConfig(window_summary=False)


def tokens_of(spans: list[list[tuple[int, int]]], tok_cfg: TokenConfig = EVENTS_ONLY, **kwargs) -> WindowTokens:
    """Event tokens of a 1 s square-burst window with exact event edges (see test_events.square_bursts)."""
    return tokenize_window(square_bursts(1000, spans), FS, ring(len(spans)), 1000.0, ev_cfg=EXACT, tok_cfg=tok_cfg,
                           **kwargs)


def column(tokens: WindowTokens, name: str, cfg: TokenConfig = TokenConfig()) -> np.ndarray:
    return tokens.features[:, feature_names(cfg).index(name)]


def test_feature_vector_has_a_fixed_documented_size():
    cfg = TokenConfig(n_envelope_points=8, n_bands=3)
    names = feature_names(cfg)
    assert len(names) == 8 + 3 + 12 and len(set(names)) == len(names)
    for spans in ([[(100, 300)], [], []], [[(100, 300), (600, 900)], [(150, 400)], [(620, 700)]]):
        tokens = tokens_of(spans, tok_cfg=cfg)
        assert tokens.features.shape == (tokens.n_tokens, len(names))
        assert tokens.features.dtype == np.float32 and np.isfinite(tokens.features).all()


def test_quiet_channels_become_inactive_tokens_only_with_include_quiet():
    spans = [[(100, 400)], [(150, 400)], [], []]
    with_quiet = tokens_of(spans)
    assert with_quiet.channel.tolist() == [0, 1, 2, 3]
    assert with_quiet.active.tolist() == [True, True, False, False]
    assert column(with_quiet, "active").tolist() == [1, 1, 0, 0]
    assert with_quiet.group.tolist() == [0, 0, 0, 0]
    without = tokens_of(spans, tok_cfg=TokenConfig(include_quiet=False, window_summary=False))
    assert without.channel.tolist() == [0, 1] and without.active.all()


def test_bad_channels_give_no_tokens():
    spans = [[(100, 400)], [(150, 400)], [], []]
    channel_ok = np.array([True, False, True, True])
    for include_quiet in (True, False):
        tokens = tokens_of(spans, channel_ok=channel_ok, tok_cfg=TokenConfig(include_quiet=include_quiet, window_summary=False))
        assert 1 not in tokens.channel.tolist() and 0 in tokens.channel.tolist()


def test_ranks_follow_onset_order_then_quiet_channels_by_amplitude():
    x = square_bursts(1000, [[(300, 600)], [(100, 600)], [(200, 600)], [], []])
    x[:, 4] *= 1.2  # the louder quiet channel ranks first among the quiet ones
    tokens = tokenize_window(x, FS, ring(5), 1000.0, ev_cfg=EXACT, tok_cfg=EVENTS_ONLY)
    assert tokens.channel.tolist() == [1, 2, 0, 4, 3]
    assert tokens.rank.tolist() == [0, 1, 2, 3, 4]
    assert tokens.onset_s.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.1, 0.1])
    assert tokens.duration_s.tolist() == pytest.approx([0.5, 0.4, 0.3, 0.5, 0.5])
    assert column(tokens, "onset_delay").tolist() == pytest.approx([0.0, 0.2, 0.4, 0.0, 0.0])
    assert column(tokens, "active_fraction").tolist() == pytest.approx([1.0, 0.8, 0.6, 0.0, 0.0])
    np.testing.assert_allclose(tokens.coords, ring(5)[[1, 2, 0, 4, 3]])


def test_groups_are_events_in_time_order_with_ranks_restarting():
    tokens = tokens_of([[(100, 300), (600, 900)], [(150, 300), (500, 900)]])
    assert tokens.group.tolist() == [0, 0, 1, 1]
    assert tokens.rank.tolist() == [0, 1, 0, 1]
    assert tokens.channel.tolist() == [0, 1, 1, 0]
    assert tokens.onset_s.tolist() == pytest.approx([0.1, 0.15, 0.5, 0.6])


def test_envelope_morphology_is_peak_normalized():
    tokens = tokens_of([[(100, 400)], []])
    shape = tokens.features[:, :TokenConfig().n_envelope_points]
    assert shape.max() <= 1.0 + 1e-6
    assert shape[0].max() == pytest.approx(1.0, abs=1e-3)
    # The active channel's log_snr (peak over its floor) is about log(10): square bursts are 10x the rest level.
    assert column(tokens, "log_snr")[0] == pytest.approx(np.log(10.0), abs=0.05)


def tone_burst(freq_hz: float, n: int = 2000) -> np.ndarray:
    """A 0.8 s tone (one event: shorter than max_event_ms) on faint noise, one channel."""
    t = np.arange(n) / FS
    x = 0.01 * np.random.default_rng(0).standard_normal(n)
    x[500:1300] += np.sin(2 * np.pi * freq_hz * t[500:1300])
    return x[:, None].astype(np.float32)


@pytest.mark.parametrize("source_fs", [200.0, 1000.0])
def test_spectral_features_of_a_tone_are_fractions_of_the_source_nyquist(source_fs):
    tokens = tokenize_window(tone_burst(60.0), FS, ring(1), source_fs, tok_cfg=EVENTS_ONLY)
    expected = 60.0 / (source_fs / 2)  # 0.6 for a 200 Hz device, 0.12 for a 1 kHz one
    assert tokens.n_tokens == 1
    for name in ("centroid", "median_frequency", "zero_crossings", "waveform_length"):
        assert column(tokens, name)[0] == pytest.approx(expected, rel=0.1), name
    bands = tokens.features[0, [feature_names(TokenConfig()).index(f"band_{j}") for j in range(4)]]
    assert bands.sum() == pytest.approx(1.0, abs=1e-3)
    assert np.argmax(bands) == int(expected * 4)  # 4 equal bands over the valid band


def test_spectral_features_follow_the_source_nyquist_not_the_corpus_rate():
    rng = np.random.default_rng(0)
    envelope = np.zeros((3000, 1))
    envelope[1000:2000] = 1.0
    myo_like = shaped_noise(rng, 3000, 1, FS, (20.0, 95.0)) * envelope  # a 200 Hz device, resampled to 1 kHz
    full_rate = shaped_noise(rng, 3000, 1, FS, (20.0, 450.0)) * envelope
    rest = 0.05 * rng.standard_normal((3000, 1))
    centroid = {}
    for name, x, source_fs in (("myo", myo_like, 200.0), ("myo_as_1k", myo_like, 1000.0), ("full", full_rate, 1000.0)):
        tokens = tokenize_window((x + rest).astype(np.float32), FS, ring(1), source_fs, tok_cfg=EVENTS_ONLY)
        centroid[name] = column(tokens, "centroid")[0]
    # Both fill their device's valid band (20 Hz high-pass up to near its Nyquist) ...
    assert 0.4 < centroid["myo"] < 0.7 and 0.4 < centroid["full"] < 0.7
    # ... while normalizing the 200 Hz device to the corpus Nyquist would squeeze its spectrum 5x.
    assert centroid["myo_as_1k"] == pytest.approx(centroid["myo"] / 5, rel=0.05)


def test_time_domain_features_match_a_direct_computation_on_each_event_span():
    # Events of different lengths land in different zero-padded FFT batches; padding must not leak in.
    rng = np.random.default_rng(0)
    amplitude = np.ones((4000, 2))
    for channel, start, stop in ((0, 200, 300), (0, 800, 1100), (0, 2000, 2700), (1, 850, 1000), (1, 3000, 3070)):
        amplitude[start:stop, channel] = 10.0
    x = (rng.standard_normal((4000, 2)) * amplitude).astype(np.float32)
    events = detect_events(x, FS)
    assert len(set((events.offset - events.onset).tolist())) >= 3
    nyquist = 100.0
    tokens = tokenize_window(x, FS, ring(2), 2 * nyquist, tok_cfg=EVENTS_ONLY)
    for group, channel, features in zip(tokens.group, tokens.channel, tokens.features):
        segment = x[events.onset[group]:events.offset[group], channel].astype(np.float64)
        rms = np.sqrt(np.mean(segment ** 2))
        steps = np.abs(np.diff(segment))
        crossings = np.count_nonzero((np.signbit(segment[1:]) != np.signbit(segment[:-1])) & (steps > 0.05 * rms))
        expected = {"log_rms": np.log(rms),
                    "zero_crossings": crossings * FS / (segment.size - 1) / (2 * nyquist),
                    "waveform_length": steps.mean() / rms * FS / (4 * np.sqrt(2) * nyquist)}
        for name, value in expected.items():
            assert features[feature_names(TokenConfig()).index(name)] == pytest.approx(value, rel=1e-4), name


def test_window_without_activity_has_zero_tokens():
    x = np.random.default_rng(0).standard_normal((2000, 3)).astype(np.float32)
    tokens = tokenize_window(x, FS, ring(3), 1000.0, tok_cfg=EVENTS_ONLY)
    assert tokens.empty and tokens.n_tokens == 0
    assert tokens.features.shape == (0, len(feature_names(TokenConfig())))
    batch = TokenBatch.collate([tokens])
    assert batch.n_tokens.tolist() == [0] and batch.mask.shape == (1, 1) and not batch.mask.any()


def test_collate_pads_masks_and_truncates_keeping_earliest_groups():
    long = tokens_of([[(100, 300), (600, 900)], [(150, 300)], [(620, 700)]])  # 2 groups x 3 channels
    short = tokens_of([[(100, 300)], [], []])
    empty = tokens_of([[], [], []])
    assert (long.n_tokens, short.n_tokens, empty.n_tokens) == (6, 3, 0)

    batch = TokenBatch.collate([long, short, empty])
    assert batch.features.shape == (3, 6, long.features.shape[1])
    assert batch.n_tokens.tolist() == [6, 3, 0]
    assert batch.mask.sum(axis=1).tolist() == [6, 3, 0]
    np.testing.assert_array_equal(batch.features[1, :3], short.features)
    np.testing.assert_array_equal(batch.channel[0], long.channel)
    assert not batch.features[1, 3:].any() and not batch.active[1, 3:].any()

    cut = TokenBatch.collate([long, short], max_tokens=4)
    assert cut.features.shape[1] == 4 and cut.n_tokens.tolist() == [4, 3]
    np.testing.assert_array_equal(cut.features[0], long.features[:4])
    assert cut.group[0].tolist() == [0, 0, 0, 1]


def test_collate_rejects_bad_input():
    tokens = tokens_of([[(100, 300)]])
    other = tokens_of([[(100, 300)]], tok_cfg=TokenConfig(n_bands=2, window_summary=False))
    for windows, kwargs in (([], {}), ([tokens, other], {}), ([tokens], {"max_tokens": 0})):
        with pytest.raises(ValueError):
            TokenBatch.collate(windows, **kwargs)


def test_tokenize_rejects_bad_metadata():
    x = square_bursts(1000, [[(100, 300)], []])
    with pytest.raises(ValueError):
        tokenize_window(x, FS, ring(3), 1000.0)
    with pytest.raises(ValueError):
        tokenize_window(x, FS, ring(2), 0.0)
    with pytest.raises(ValueError):
        TokenConfig(n_envelope_points=1)


def test_window_summary_is_group_zero_over_the_whole_window_and_shifts_the_events():
    spans = [[(100, 300), (600, 900)], [(150, 400)], [], []]
    plain = tokens_of(spans)
    summary_cfg = TokenConfig()  # the default
    assert summary_cfg.window_summary
    both = tokens_of(spans, tok_cfg=summary_cfg)
    first = both.group == 0
    assert sorted(both.channel[first].tolist()) == [0, 1, 2, 3]  # one token per good channel
    assert both.active[first].tolist() == [True, True, False, False]  # active in some event: by onset, first
    for name in ("features", "channel", "rank", "active", "onset_s", "duration_s"):  # the events, unchanged
        np.testing.assert_array_equal(getattr(both, name)[~first], getattr(plain, name))
    np.testing.assert_array_equal(both.group[~first], plain.group + 1)
    # a quiet channel's summary spans the window; an active one spans its first onset to its last offset
    duration = dict(zip(both.channel[first].tolist(), both.duration_s[first].tolist()))
    assert duration[2] == duration[3] == pytest.approx(1.0) and duration[0] == pytest.approx(0.8, abs=0.01)
    x = square_bursts(1000, spans)
    rms = dict(zip(both.channel[first].tolist(), column(both, "log_rms", summary_cfg)[first].tolist()))
    for ch in range(4):
        assert rms[ch] == pytest.approx(np.log(np.sqrt(np.mean(x[:, ch].astype(np.float64) ** 2))), abs=1e-3)


def test_a_window_without_events_keeps_its_summary_tokens():
    quiet = [[], [], []]
    assert tokens_of(quiet).empty
    tokens = tokens_of(quiet, tok_cfg=TokenConfig(window_summary=True), channel_ok=np.array([True, False, True]))
    assert tokens.channel.tolist() in ([0, 2], [2, 0]) and not tokens.active.any() and set(tokens.group) == {0}
