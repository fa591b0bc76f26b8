import numpy as np
import pytest
from scipy import signal

from preprocessing.errors import DataError
from preprocessing.harmonize import HarmonizeConfig, denormalize, harmonize, valid_band
from preprocessing.recording import Segment
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
