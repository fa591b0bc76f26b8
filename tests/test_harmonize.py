import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from preprocessing.corpus import CorpusWriter
from preprocessing.errors import DataError
from preprocessing.harmonize import HarmonizeConfig, denormalize, harmonize, valid_band
from preprocessing.recording import RawRecording, Segment
from preprocessing.streaming import harmonize_chunked
from recordings import make_raw, noise


def _peak(x: np.ndarray, fs: float) -> tuple[float, float]:
    """Frequency and amplitude of the strongest sinusoid (Hann window, amplitude-corrected)."""
    window = np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(x * window)) * 2 / window.sum()
    k = int(np.argmax(spectrum))
    return float(np.fft.rfftfreq(len(x), 1 / fs)[k]), float(spectrum[k])


@pytest.mark.parametrize("source_fs,freq", [(2048.0, 100.0), (200.0, 60.0), (1000.0, 300.0), (4000.0, 150.0)])
def test_resampling_keeps_sine_amplitude_and_frequency(source_fs, freq):
    t = np.arange(int(4 * source_fs)) / source_fs
    emg = np.stack([3.0 * np.sin(2 * np.pi * freq * t), np.sin(2 * np.pi * freq * t + 1)], axis=1)
    rec = harmonize(make_raw(emg, fs=source_fs), HarmonizeConfig(notch=False))
    assert rec.fs == 1000.0
    assert abs(rec.emg.shape[0] - len(t) * 1000.0 / source_fs) <= 1
    filtered = denormalize(rec.emg, rec.center, rec.scale)
    middle = filtered[500:-500]  # away from filter edges
    for ch, amplitude in enumerate([3.0, 1.0]):
        f, a = _peak(middle[:, ch], 1000.0)
        assert abs(f - freq) <= 0.5
        assert a == pytest.approx(amplitude, rel=0.03)


def test_band_pass_has_the_stated_band():
    fs = 2000.0
    rec = harmonize(make_raw(noise(int(60 * fs), 2), fs=fs), HarmonizeConfig(notch=False))
    assert rec.valid_band_hz == (20.0, 450.0)
    freqs, psd = signal.welch(denormalize(rec.emg, rec.center, rec.scale), fs=rec.fs, nperseg=1024, axis=0)
    psd = psd.mean(axis=1)
    passband = psd[(freqs > 60) & (freqs < 380)].mean()
    assert psd[(freqs > 5) & (freqs < 8)].mean() < passband / 100  # >= 20 dB down below the band
    assert psd[(freqs > 480)].mean() < passband / 30
    # zero-phase filtering applies the Butterworth twice: its -3 dB edges become -6 dB (power 1/4)
    at_edge = psd[np.argmin(np.abs(freqs - 450))] / passband
    assert 0.1 < at_edge < 0.4
    at_low_edge = psd[np.argmin(np.abs(freqs - 20))] / passband
    assert 0.1 < at_low_edge < 0.4


def test_low_rate_source_keeps_only_its_band():
    assert valid_band(200.0, HarmonizeConfig()) == (20.0, 90.0)
    rec = harmonize(make_raw(noise(200 * 60, 1), fs=200.0), HarmonizeConfig(notch=False))
    freqs, psd = signal.welch(rec.emg[:, 0], fs=1000.0, nperseg=1024)
    assert psd[freqs > 120].sum() < 0.01 * psd.sum()  # nothing pretends a 200 Hz source has content above 100 Hz


def test_normalization_statistics_are_stored_and_invertible():
    emg = noise(20_000, 3) * np.array([1.0, 50.0, 0.2]) + np.array([5.0, -300.0, 0.0])
    rec = harmonize(make_raw(emg), HarmonizeConfig(notch=False))
    assert np.allclose(np.median(rec.emg, axis=0), 0, atol=1e-3)
    mad = 1.4826 * np.median(np.abs(rec.emg - np.median(rec.emg, axis=0)), axis=0)
    assert np.allclose(mad, 1, atol=1e-3)
    assert rec.scale[1] / rec.scale[0] == pytest.approx(50, rel=0.05)
    attrs = rec.attrs(HarmonizeConfig(notch=False))
    back = denormalize(rec.emg, attrs["normalization"]["center"], attrs["normalization"]["scale"])
    assert np.allclose((back - rec.center) / rec.scale, rec.emg, atol=1e-5)
    # the stored statistics describe the filtered signal: its spread, not the raw DC offset
    assert abs(rec.center[1]) < 1.0


def test_segment_boundaries_rescale_within_one_sample_across_joins():
    fs = 2048.0
    n = [10_240, 11_000, 9_001]
    joins = [n[0], n[0] + n[1]]
    segments = [Segment(0, n[0], 0, "rest", 0), Segment(n[0], n[0] + 5_000, 1, "fist", 0),
                Segment(n[0] + 5_000, joins[1], 0, "rest", 1), Segment(joins[1] + 17, sum(n), 1, "fist", 1)]
    rec = harmonize(make_raw(noise(sum(n), 2), fs=fs, segments=segments, joins=joins))
    ratio = 1000 / fs
    assert len(rec.segments) == len(segments)
    for before, after in zip(segments, rec.segments):
        assert (after.label, after.label_name, after.rep) == (before.label, before.label_name, before.rep)
        assert abs(after.start - before.start * ratio) <= 1
        assert abs(after.stop - before.stop * ratio) <= 1
    assert rec.segments[-1].stop == rec.emg.shape[0]
    assert rec.segments[0].stop == rec.joins[0] == rec.segments[1].start  # a boundary at a join stays on it
    assert [abs(j - jj * ratio) <= 1 for j, jj in zip(rec.joins, joins)] == [True, True]


def test_declared_mains_line_is_notched_only_inside_the_band():
    fs = 1000.0
    t = np.arange(int(30 * fs)) / fs
    hum = noise(len(t), 2) + 5 * np.sin(2 * np.pi * 50 * t)[:, None]
    undeclared = harmonize(make_raw(hum, fs=fs))
    assert undeclared.notch_hz == [] and "powerline" in undeclared.quality[0]  # flagged, never filtered unasked
    rec = harmonize(make_raw(hum, fs=fs, notch_hz=(50.0,)))
    assert rec.notch_hz == [50.0]
    freqs, psd = signal.welch(denormalize(rec.emg, rec.center, rec.scale)[:, 0], fs=1000.0, nperseg=2048)
    line = psd[np.argmin(np.abs(freqs - 50))]
    assert line < 5 * np.median(psd[(freqs > 30) & (freqs < 45)])  # the line is gone
    # 60 Hz on a 200 Hz source is inside its 20-90 Hz band; 120 Hz is not
    t200 = np.arange(200 * 30) / 200.0
    rec200 = harmonize(make_raw(noise(len(t200), 1) + 5 * np.sin(2 * np.pi * 60 * t200)[:, None], fs=200.0,
                                notch_hz=(60.0, 120.0)))
    assert rec200.notch_hz == [60.0]


def test_declared_notch_does_not_depend_on_the_samples():
    """The filter of a recording is fixed by its manifest: replacing half of it by other data never changes it."""
    fs = 1000.0
    emg = noise(int(20 * fs), 2)
    other = emg.copy()
    other[len(other) // 2:] = 50 * np.sin(2 * np.pi * 60 * np.arange(len(other) // 2) / fs)[:, None]
    assert harmonize(make_raw(emg, notch_hz=(60.0,))).notch_hz == harmonize(make_raw(other, notch_hz=(60.0,))).notch_hz
    assert harmonize(make_raw(emg)).notch_hz == harmonize(make_raw(other)).notch_hz == []


def test_detect_notch_finds_lines_in_the_spectrum():
    fs = 1000.0
    t = np.arange(int(30 * fs)) / fs
    clean = noise(len(t), 2)
    detect = HarmonizeConfig(detect_notch=True)
    assert harmonize(make_raw(clean, fs=fs), detect).notch_hz == []
    rec = harmonize(make_raw(clean + 5 * np.sin(2 * np.pi * 50 * t)[:, None], fs=fs), detect)
    assert 50.0 in rec.notch_hz and 60.0 not in rec.notch_hz


def test_quality_flags_and_nan_repair():
    emg = noise(10_000, 5) * 20
    emg[:, 1] = 7.0  # flat
    emg[:, 2] = np.clip(emg[:, 2] * 10, -127, 127)  # rails of an 8-bit converter
    emg[3000:3050, 3] = np.nan  # a short NaN run
    emg[:, 4] = np.nan
    emg[:100, 4] = 1.0  # mostly NaN: dead
    rec = harmonize(make_raw(emg, adc_range=(-128, 127)))
    assert rec.quality[0] == []
    assert "flat" in rec.quality[1]
    assert "clipped" in rec.quality[2]
    assert "nan_runs" in rec.quality[3] and rec.channel_ok[3]
    assert "dead" in rec.quality[4]
    assert rec.channel_ok == [True, False, True, True, False]
    assert np.isfinite(rec.emg).all()


@pytest.mark.parametrize("case,match", [
    ("empty", "empty recording"),
    ("absurd_fs", "sampling rate"),
    ("missing_fs", "sampling rate"),
    ("layout", "electrode layout"),
    ("out_of_bounds", "outside the recording"),
    ("overlap", "overlap"),
    ("all_nan", "NaN"),
])
def test_bad_input_names_the_file_and_the_problem(case, match):
    emg = noise(5000, 4)
    raw = make_raw(emg, segments=[Segment(0, 2500, 0, "rest"), Segment(2500, 5000, 1, "fist")])
    if case == "empty":
        raw.emg = np.zeros((0, 4))
    elif case == "absurd_fs":
        raw.fs = 5.0
    elif case == "missing_fs":
        raw.fs = float("nan")
    elif case == "layout":
        raw.emg = noise(5000, 3)
    elif case == "out_of_bounds":
        raw.segments = [Segment(4000, 6000, 1, "fist")]
    elif case == "overlap":
        raw.segments = [Segment(0, 3000, 0, "rest"), Segment(2500, 5000, 1, "fist")]
    elif case == "all_nan":
        raw.emg = np.full((5000, 4), np.nan)
    with pytest.raises(DataError, match=match) as err:
        harmonize(raw)
    assert err.value.where == "unit_s1_day1.csv"


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="target_fs"):
        HarmonizeConfig(target_fs=0)
    with pytest.raises(ValueError, match="highpass"):
        HarmonizeConfig(highpass_hz=500, lowpass_hz=450)


# --- the streaming path (preprocessing/streaming.py) against the whole-recording one ---

def _stream_case(source_fs: float, notch: bool, seconds: float = 23.7) -> RawRecording:
    """Three files joined, DC offsets and scales that differ per channel, a humming channel, labeled segments."""
    n = int(seconds * source_fs)
    t = np.arange(n) / source_fs
    emg = noise(n, 3, seed=int(source_fs)) * np.array([1.0, 40.0, 0.2]) + np.array([5.0, -300.0, 0.0])
    emg[:, 0] += 4 * np.sin(2 * np.pi * 50 * t)
    joins = [n // 3, n // 3 + int(5.1 * source_fs)]
    segments = [Segment(0, joins[0], 0, "rest", 0), Segment(joins[0] + 3, joins[1] - 1, 1, "fist", 0),
                Segment(joins[1], n - 11, 1, "fist", 1)]
    return make_raw(emg, fs=source_fs, segments=segments, joins=joins, notch_hz=(50.0,) if notch else ())


def _assert_same(got, ref) -> None:
    assert got.emg.shape == ref.emg.shape and got.emg.dtype == np.float32
    np.testing.assert_allclose(got.emg, ref.emg, rtol=0, atol=1e-6)  # z-scores: float32 resolution at |z| ~ 8
    assert np.all(np.abs(got.center - ref.center) <= 1e-6 * ref.scale)  # center: in units of the scale
    np.testing.assert_allclose(got.scale, ref.scale, rtol=1e-6)
    assert got.segments == ref.segments and got.joins == ref.joins  # the same sample indices, exactly
    assert (got.quality, got.notch_hz, got.valid_band_hz) == (ref.quality, ref.notch_hz, ref.valid_band_hz)


@pytest.mark.parametrize("source_fs", [2048.0, 200.0, 1000.0])  # down-, up-sampling, equal rates
@pytest.mark.parametrize("notch", [True, False])
def test_chunked_equals_whole_recording(source_fs, notch):
    raw = _stream_case(source_fs, notch)
    ref = harmonize(raw)
    # 10 s and 3.7 s do not divide the pieces; 0.37 s is shorter than the band-pass's and the notch's transients
    for chunk_seconds in (10.0, 3.7, 0.37):
        _assert_same(harmonize_chunked(raw, HarmonizeConfig(chunk_seconds=chunk_seconds)), ref)


def test_chunked_equals_whole_recording_on_repaired_flat_and_clipped_channels():
    emg = noise(30_000, 6, seed=3) * 20
    emg[:, 1] = 7.0  # flat
    emg[:, 2] = np.clip(emg[:, 2] * 10, -127, 127)  # at the rails of an 8-bit converter
    emg[3000:3050, 3] = np.nan  # a short run
    emg[9_500:14_200, 5] = np.nan  # a run across several chunks
    emg[:, 4] = np.nan
    emg[:100, 4] = 1.0  # mostly NaN: dead
    for adc_range in ((-128, 127), None):
        raw = make_raw(emg, adc_range=adc_range)
        ref = harmonize(raw)
        assert ["flat" in ref.quality[1], "clipped" in ref.quality[2], "dead" in ref.quality[4]] == [True] * 3
        assert ref.channel_ok[3] and ref.channel_ok[5] and "nan_runs" in ref.quality[5]
        _assert_same(harmonize_chunked(raw, HarmonizeConfig(chunk_seconds=2.0)), ref)


def test_chunked_detects_the_same_mains_lines():
    fs = 1000.0
    t = np.arange(int(30 * fs)) / fs
    raw = make_raw(noise(len(t), 2) + 5 * np.sin(2 * np.pi * 50 * t)[:, None], fs=fs)
    config = HarmonizeConfig(detect_notch=True, chunk_seconds=4.0)
    ref = harmonize(raw, config)
    assert 50.0 in ref.notch_hz
    _assert_same(harmonize_chunked(raw, config), ref)


def test_chunked_refuses_what_the_whole_path_refuses():
    raw = make_raw(np.full((5000, 4), np.nan))
    with pytest.raises(DataError, match="NaN"):
        harmonize_chunked(raw)
    raw = make_raw(np.full((5000, 2), 3.0))
    with pytest.raises(DataError, match="no usable channel"):
        harmonize_chunked(raw)


def _peak_bytes(raw: RawRecording, out: Path) -> int:
    """tracemalloc peak of streaming one recording into a corpus; the source array exists before it starts."""
    writer = CorpusWriter(out, HarmonizeConfig(chunk_seconds=2.0))
    tracemalloc.start()
    try:
        writer.write_raw(raw)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_memory_does_not_grow_with_recording_length(tmp_path):
    fs = 2048.0

    def recording(seconds: float) -> RawRecording:
        return make_raw(noise(int(seconds * fs), 8, seed=1), fs=fs, notch_hz=(50.0,))

    short, long = recording(20.0), recording(200.0)
    short_peak = _peak_bytes(short, tmp_path / "short.zarr")
    long_peak = _peak_bytes(long, tmp_path / "long.zarr")
    assert long_peak < 2 * short_peak, (short_peak, long_peak)
    assert long_peak < long.emg.nbytes  # below one float64 copy of the recording (the whole path makes several)
