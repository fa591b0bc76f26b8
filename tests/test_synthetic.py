"""The synthetic generator: metadata, protocol, spectrum, geometry, learnability, ground truth."""

from __future__ import annotations

import pickle
import time
from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest
from scipy import signal

from preprocessing.recording import RawRecording
from preprocessing.synthetic import (BAD_CHANNEL_KINDS, SyntheticConfig, SyntheticDatasetSpec, SyntheticJob,
                                     bad_channels, burst_train, default_datasets, generate_recording,
                                     generate_recording_with_truth, synthetic_jobs)

TINY = {spec.name: spec for spec in default_datasets("tiny")}
EXPECTED = {  # name: (fs, channels, units, adc_range)
    "synth_myo": (200.0, 8, "counts", (-128.0, 127.0)),
    "synth_3dc": (1000.0, 10, "counts", (0.0, 1023.0)),
    "synth_bipolar4": (2048.0, 4, "uV", None),
    "synth_hdgrid": (2000.0, 64, "mV", None),
}


@lru_cache(maxsize=None)
def tiny(name: str) -> tuple[RawRecording, np.ndarray]:
    """Subject 1 of a default tiny dataset, generated once for all tests (none has a bad channel)."""
    return generate_recording_with_truth(SyntheticJob(TINY[name], 0, 0, 0))


def clean(spec: SyntheticDatasetSpec, **changes) -> SyntheticDatasetSpec:
    """A float-valued variant without mains or bad channels, for measurements."""
    return replace(spec, adc_range=None, units="uV", gain=1.0, dc_offset=0.0, powerline_hz=0.0, bad_channel_prob=0.0,
                   **changes)


def psd(emg: np.ndarray, fs: float, nperseg: int) -> tuple[np.ndarray, np.ndarray]:
    freqs, density = signal.welch(emg, fs=fs, nperseg=nperseg, axis=0)  # detrend removes the DC offset
    return freqs, density.mean(axis=1)


def line_ratio(emg: np.ndarray, fs: float, f0: float) -> float:
    """Power at f0 over the median density 5-15 Hz away, at 0.5 Hz resolution."""
    freqs, density = psd(emg, fs, int(2 * fs))
    near = (np.abs(freqs - f0) >= 5) & (np.abs(freqs - f0) <= 15)
    return float(density[np.abs(freqs - f0) <= 0.5].max() / np.median(density[near]))


def test_default_datasets_differ_like_real_ones():
    assert set(TINY) == set(EXPECTED)
    for name, (fs, channels, units, adc_range) in EXPECTED.items():
        rec, truth = tiny(name)
        assert (rec.fs, rec.n_channels, rec.units, rec.adc_range) == (fs, channels, units, adc_range)
        assert rec.layout.n_channels == channels and rec.emg.dtype == np.float32 and np.isfinite(rec.emg).all()
        assert truth.shape == rec.emg.shape and truth.dtype == bool
        assert (rec.dataset, rec.subject, rec.session) == (name, "s01", "session1")
        assert rec.key == SyntheticJob(TINY[name], 0, 0, 0).key == f"{name}/s01/session1"
        assert rec.joins == [] and rec.rest_label == 0 and rec.label_names[0] == "rest"
        assert rec.license == "CC0 (synthetic)" and rec.source_files == [f"synthetic:{rec.key}:seed=0"]
    assert TINY["synth_hdgrid"].electrode_layout().kind == "grid"
    assert TINY["synth_bipolar4"].electrode_layout().kind == "custom"


def test_scales_and_jobs():
    for scale, subjects, sessions, seconds in (("tiny", 3, 1, 13.0), ("demo", 5, 2, 89.0), ("full", 20, 3, 352.0)):
        specs = default_datasets(scale)
        jobs = synthetic_jobs(SyntheticConfig(scale=scale))
        assert len(jobs) == 4 * subjects * sessions == len({job.key for job in jobs})
        for spec in specs:
            protocol_s = (spec.n_gestures - 1) * spec.n_reps * (spec.gesture_s + spec.rest_s) + spec.rest_s
            assert (spec.n_subjects, spec.n_sessions, protocol_s) == (subjects, sessions, seconds) == (
                spec.n_subjects, spec.n_sessions, spec.protocol_seconds)
    assert default_datasets("demo")[0].n_gestures == 6 and default_datasets("demo")[0].n_reps == 5
    assert jobs[-1].key == "synth_hdgrid/s20/session3"
    with pytest.raises(ValueError, match="scale"):
        SyntheticConfig(scale="huge")
    with pytest.raises(ValueError, match="unique"):
        synthetic_jobs(SyntheticConfig(datasets=[TINY["synth_myo"], TINY["synth_myo"]]))
    with pytest.raises(ValueError):
        replace(TINY["synth_myo"], n_gestures=1)
    with pytest.raises(ValueError):
        replace(TINY["synth_myo"], layout={"layout": "star"})


def test_large_scale_is_100_hours_of_200_subjects_on_the_four_devices():
    # from the specs alone: generating the large scale takes hours
    jobs = synthetic_jobs(SyntheticConfig(scale="large"))
    assert len({(job.spec.name, job.subject) for job in jobs}) >= 200
    assert sum(job.spec.protocol_seconds for job in jobs) / 3600 >= 100
    assert [spec.name for spec in default_datasets("large")] == [spec.name for spec in default_datasets("demo")]
    # a slice (or a multiple) of a scale: other subject counts, the same protocol
    sliced = synthetic_jobs(SyntheticConfig(scale="large", subjects=3))
    assert len(sliced) == 4 * 3 * 2 and {job.key for job in sliced} <= {job.key for job in jobs}
    assert all(replace(job.spec, n_subjects=64) == default_datasets("large")[i // 6] for i, job in enumerate(sliced))
    with pytest.raises(ValueError, match="subjects"):
        SyntheticConfig(subjects=0)
    with pytest.raises(ValueError, match="default datasets"):
        SyntheticConfig(subjects=2, datasets=[TINY["synth_myo"]])


def test_cli_offers_every_scale():
    from aemg_dist.cli import build_parser
    from preprocessing.synthetic import _SCALES

    for command in ("prepare", "demo"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--scale", "huge"])
        for scale in _SCALES:
            assert build_parser().parse_args([command, "--scale", scale, "--out", "x"]).scale == scale


def test_deterministic_and_independent_of_other_jobs():
    job = SyntheticJob(TINY["synth_3dc"], 1, 0, seed=7)
    first = generate_recording(job)
    generate_recording(SyntheticJob(TINY["synth_myo"], 0, 0, seed=7))  # no hidden state between jobs
    again = pickle.loads(pickle.dumps(job)).load()  # as a Ray task would run it
    assert np.array_equal(first.emg, again.emg) and first.segments == again.segments
    # a recording depends on its dataset's name, not on its position in the configuration
    config = SyntheticConfig(seed=7, datasets=[TINY["synth_3dc"], TINY["synth_myo"]])
    reordered = next(j for j in synthetic_jobs(config) if j.key == job.key)
    assert np.array_equal(reordered.load().emg, first.emg)
    assert not np.array_equal(generate_recording(replace(job, seed=8)).emg, first.emg)
    assert not np.array_equal(generate_recording(replace(job, subject_index=2)).emg, first.emg)


def test_blocks_bound_memory_without_changing_a_number(monkeypatch):
    """The generator works in blocks of rows and channels; other block sizes give the same truth bit for bit and
    the same recording up to float32 rounding (the muscles are added by one matrix product per block of rows, and
    BLAS may sum a product of another shape in another order: numpy 2.4's OpenBLAS does, by one float32 ulp), and
    its peak allocation stays near two recordings' size (the recording and the noise's spectrum; the whole-array
    generator it replaced peaked at 5.3x)."""
    import tracemalloc

    from preprocessing import synthetic

    spec = replace(default_datasets("demo")[3], bad_channel_prob=1.0)  # the 64-channel grid, 89 s
    jobs = [SyntheticJob(spec, 0, 0, seed) for seed in (0, 1, 5)]  # noisy, clipped and flat channels
    assert sorted(kind for job in jobs for kind in bad_channels(job).values()) == sorted(BAD_CHANNEL_KINDS)
    tracemalloc.start()
    try:
        reference = [generate_recording_with_truth(job) for job in jobs]
        tracemalloc.reset_peak()
        held = tracemalloc.get_traced_memory()[0]  # the references above
        recording = generate_recording(jobs[0])
        peak = tracemalloc.get_traced_memory()[1] - held
    finally:
        tracemalloc.stop()
    assert peak < 3.0 * recording.emg.nbytes
    monkeypatch.setattr(synthetic, "_ROW_BLOCK", 1000)
    monkeypatch.setattr(synthetic, "_CHANNEL_BLOCK", 3)  # blocks of 3, 3, ..., 1 channels
    for job, (emg, truth) in zip(jobs, ((r.emg, t) for r, t in reference)):
        again, again_truth = generate_recording_with_truth(job)
        assert np.array_equal(again_truth, truth)
        np.testing.assert_allclose(again.emg, emg, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(emg).max())


def test_segments_follow_a_rest_gesture_protocol():
    spec = replace(TINY["synth_3dc"], n_gestures=5, n_reps=3)
    rec = generate_recording(SyntheticJob(spec, 0, 0, 0))
    segs = rec.segments
    assert segs[0].start == 0 and segs[-1].stop == rec.n_samples
    assert all(a.stop == b.start and a.stop > a.start for a, b in zip(segs, segs[1:]))  # cover, no overlap
    assert [s.label == 0 for s in segs] == [i % 2 == 0 for i in range(len(segs))]  # rest, gesture, ..., rest
    assert all(s.label_name == rec.label_names[s.label] for s in segs) and rec.label_names[0] == "rest"
    for label in range(1, 5):
        assert sorted(s.rep for s in segs if s.label == label) == [0, 1, 2]
    nominal = {0: spec.rest_s * spec.fs, 1: spec.gesture_s * spec.fs}
    deviation = [s.stop - s.start - nominal[min(s.label, 1)] for s in segs]
    assert max(np.abs(deviation)) <= spec.length_jitter and len(set(deviation)) > 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_spectrum_is_emg_band_limited_by_the_rate(name):
    rec, _ = tiny(name)
    freqs, density = psd(rec.emg, rec.fs, 256)
    total = density.sum()
    assert density[(freqs >= 20) & (freqs <= 450)].sum() / total > 0.97
    above = density[freqs > 0.45 * rec.fs].sum() / total
    # ADC rounding and the odd clipped peak leave a trace above the band; nothing else may
    assert above < (5e-3 if rec.adc_range else 1e-8)


@pytest.mark.parametrize("name", ["synth_myo", "synth_3dc"])
def test_adc_datasets_hold_clipped_integer_counts(name):
    rec, _ = tiny(name)
    low, high = rec.adc_range
    assert np.array_equal(rec.emg, np.round(rec.emg)) and rec.emg.min() >= low and rec.emg.max() <= high
    spec = TINY[name]  # the unsigned 3DC-like ADC sits at mid-scale, up to each channel's random offset
    assert abs(np.median(rec.emg) - spec.dc_offset) < 4 * spec.gain * spec.dc_jitter_uv
    assert np.unique(rec.emg).size > 30  # not stuck at a few levels


def test_powerline_line_at_the_stated_frequency():
    for name, spec in TINY.items():
        rec, _ = tiny(name)
        assert line_ratio(rec.emg, rec.fs, spec.powerline_hz) > 5, name  # measured 9.5-35 (s01)
    rec = generate_recording(SyntheticJob(replace(TINY["synth_3dc"], powerline_hz=0.0), 0, 0, 0))
    assert max(line_ratio(rec.emg, rec.fs, 50.0), line_ratio(rec.emg, rec.fs, 60.0)) < 3.5  # measured <= 2.1


def gesture_patterns(rec: RawRecording) -> np.ndarray:
    """(gestures, channels) log RMS per channel, minus its mean over channels."""
    patterns = []
    for label in range(1, max(rec.label_names) + 1):
        x = np.concatenate([rec.emg[s.start:s.stop] for s in rec.segments if s.label == label])
        log_rms = np.log(x.std(axis=0))
        patterns.append(log_rms - log_rms.mean())
    return np.array(patterns)


def test_band_rotation_moves_the_spatial_pattern():
    spec = clean(TINY["synth_myo"], n_subjects=4, n_sessions=2, n_gestures=6)
    before = gesture_patterns(generate_recording(SyntheticJob(spec, 0, 0, 0)))
    # the same subject and session with the band turned by one electrode (45 degrees)
    turned = replace(spec, layout={"layout": "ring", "n_channels": 8, "offset_deg": 45.0})
    after = gesture_patterns(generate_recording(SyntheticJob(turned, 0, 0, 0)))
    corr = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert corr(after, np.roll(before, -1, axis=1)) > 0.9 and corr(after, before) < 0.7
    # subjects (rotated band, own synergies) differ far more than re-donnings of one subject
    patterns = {(s, k): gesture_patterns(generate_recording(SyntheticJob(spec, s, k, 0)))
                for s in range(4) for k in range(2)}
    across_sessions = max(np.abs(patterns[s, 0] - patterns[s, 1]).mean() for s in range(4))
    across_subjects = min(np.abs(patterns[a, 0] - patterns[b, 0]).mean() for a in range(4) for b in range(a + 1, 4))
    assert across_subjects > 2 * across_sessions


def rms_features(rec: RawRecording, window_s: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log RMS per channel of windows in the middle half of each segment: features, labels, reps."""
    width = int(window_s * rec.fs)
    features, labels, reps = [], [], []
    for seg in rec.segments:
        quarter = (seg.stop - seg.start) // 4
        for start in range(seg.start + quarter, seg.stop - quarter - width + 1, width):
            features.append(np.log(rec.emg[start:start + width].std(axis=0) + 1e-6))
            labels.append(seg.label)
            reps.append(seg.rep)
    return np.array(features), np.array(labels), np.array(reps)


def lda_accuracy(x_train, y_train, x_test, y_test, shrinkage: float = 0.1) -> float:
    """Balanced accuracy of a shrinkage LDA (shared covariance)."""
    classes = np.unique(y_train)
    means = np.array([x_train[y_train == c].mean(axis=0) for c in classes])
    cov = np.cov((x_train - means[np.searchsorted(classes, y_train)]).T)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    weights = np.linalg.solve(cov, means.T).T
    predicted = classes[np.argmax(x_test @ weights.T - 0.5 * np.sum(weights * means, axis=1), axis=1)]
    return float(np.mean([np.mean(predicted[y_test == c] == c) for c in np.unique(y_test)]))


def test_learnable_within_subject_but_not_trivially_across_subjects():
    spec = replace(TINY["synth_myo"], n_subjects=5, n_gestures=6, n_reps=4, gesture_s=1.5, bad_channel_prob=0.0)
    data = [rms_features(generate_recording(SyntheticJob(spec, s, 0, 0))) for s in range(spec.n_subjects)]
    within, across = [], []
    for held_out, (x, y, rep) in enumerate(data):
        train = rep < 2  # first two repetitions train, the last two test
        within.append(lda_accuracy(x[train], y[train], x[~train], y[~train]))
        others = [d for i, d in enumerate(data) if i != held_out]
        x_others, y_others = np.concatenate([d[0] for d in others]), np.concatenate([d[1] for d in others])
        across.append(lda_accuracy(x_others, y_others, x, y))
    # measured with seed 0: within 0.98, across 0.61 (chance 1/6); seeds 0-5: within 0.91-0.99, across 0.45-0.80
    assert np.mean(within) > 0.85
    assert np.mean(across) > 0.3
    assert np.mean(within) - np.mean(across) > 0.12


def test_truth_marks_muscle_activity():
    for name in EXPECTED:
        rec, truth = tiny(name)
        rest = np.concatenate([np.arange(s.start, s.stop) for s in rec.segments if s.label == 0])
        assert not truth[rest].any(), name
        assert all(truth[s.start:s.stop].any() for s in rec.segments if s.label != 0), name
    rec, truth = generate_recording_with_truth(SyntheticJob(clean(TINY["synth_3dc"]), 0, 0, 0))
    power = (rec.emg - np.median(rec.emg, axis=0)).astype(float) ** 2  # without each channel's DC offset
    for ch in range(rec.n_channels):
        assert power[truth[:, ch], ch].mean() > 10 * power[~truth[:, ch], ch].mean()


def test_bad_channels():
    always = replace(TINY["synth_3dc"], bad_channel_prob=1.0)
    found = {}
    for subject in range(40):
        job = SyntheticJob(always, subject, 0, 0)
        (channel, kind), = bad_channels(job).items()
        found.setdefault(kind, (job, channel))
    assert set(found) == set(BAD_CHANNEL_KINDS)
    for kind, (job, channel) in found.items():
        rec, truth = generate_recording_with_truth(job)
        x, others = rec.emg[:, channel], np.delete(rec.emg, channel, axis=1)
        if kind == "flat":
            assert x.std() == 0 and not truth[:, channel].any()
        elif kind == "noisy":
            rest = np.concatenate([np.arange(s.start, s.stop) for s in rec.segments if s.label == 0])
            assert x[rest].std() > 10 * np.median(others[rest].std(axis=0))
        else:
            assert np.mean((x == rec.adc_range[0]) | (x == rec.adc_range[1])) > 0.01  # harmonize's clip flag
    # the float datasets saturate at repeated extreme values instead of at ADC limits
    spec = replace(TINY["synth_bipolar4"], bad_channel_prob=1.0)
    job, channel = next((job, channel) for job in (SyntheticJob(spec, s, 0, 0) for s in range(40))
                        for channel, kind in bad_channels(job).items() if kind == "clipped")
    x = generate_recording(job).emg[:, channel]
    assert np.mean(x == x.max()) > 0.03 and np.mean(x == x.min()) > 0.03
    # by default only a small share of recordings has a bad channel
    jobs = synthetic_jobs(SyntheticConfig(scale="full"))
    share = np.mean([bool(bad_channels(j)) for j in jobs])
    assert 0.04 < share < 0.2


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0])
def test_burst_train_has_the_requested_snr_and_truth(snr_db):
    fs, onsets, durations = 1000.0, [1.0, 3.0, 5.5, 8.0], [1.0, 1.5, 0.5, 1.2]
    x, on, off = burst_train(fs, 10_000, onsets, durations, snr_db, seed=3)
    assert x.shape == (10_000,) and x.dtype == np.float32
    assert on.tolist() == [1000, 3000, 5500, 8000] and off.tolist() == [2000, 4500, 6000, 9200]
    inside = np.zeros(x.size, bool)
    for a, b in zip(on, off):
        inside[a:b] = True
    # exactly: the same seed gives the same noise and bursts, the SNR only scales the bursts
    noise = burst_train(fs, 10_000, onsets, durations, -300.0, seed=3)[0].astype(float)
    bursts = x - noise
    assert abs(10 * np.log10(np.mean(bursts[inside] ** 2) / np.mean(noise ** 2)) - snr_db) < 0.01
    assert np.abs(bursts[~inside]).max() < 1e-5
    # blind, from the signal alone (what a detector sees): within the estimate's spread over seeds
    noise_power = np.mean(x[~inside].astype(float) ** 2)
    blind = 10 * np.log10((np.mean(x[inside].astype(float) ** 2) - noise_power) / noise_power)
    assert abs(blind - snr_db) < 1.5
    assert np.array_equal(x, burst_train(fs, 10_000, onsets, durations, snr_db, seed=3)[0])
    freqs, density = psd(x[:, None], fs, 256)
    assert density[freqs > 0.45 * fs].sum() < 1e-3 * density.sum()  # only the 5 ms burst edges leak


def test_burst_train_rejects_impossible_bursts():
    with pytest.raises(ValueError):
        burst_train(1000.0, 1000, [0.5], [1.0], 0.0)  # runs past the end
    with pytest.raises(ValueError):
        burst_train(1000.0, 5000, [1.0, 1.5], [1.0, 1.0], 0.0)  # overlap
    with pytest.raises(ValueError):
        burst_train(1000.0, 5000, [1.0, 2.0], [1.0], 0.0)


def test_one_minute_of_8_channels_at_1khz_in_well_under_a_second():
    spec = clean(TINY["synth_myo"], fs=1000.0, n_gestures=6, n_reps=4, gesture_s=1.5, rest_s=1.5)
    job = SyntheticJob(spec, 0, 0, 0)
    best = float("inf")
    for _ in range(2):  # best of two: the machine is shared
        start = time.perf_counter()
        rec = generate_recording(job)
        best = min(best, time.perf_counter() - start)
    assert rec.n_samples >= 60 * 1000 and rec.n_channels == 8
    assert best < 1.0
