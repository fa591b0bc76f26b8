"""The six shared datasets through manifests -> harmonization -> corpus (real_data)."""

from __future__ import annotations

import numpy as np
import pytest

from aemg_dist.evaluation.folds import calibration_split, loso_folds
from aemg_dist.windows import WindowConfig, cut_windows, recording_spans
from preprocessing.corpus import Corpus, check_corpus, corpus_summary
from preprocessing.harmonize import HarmonizeConfig
from preprocessing.manifest import manifest_jobs, resolve_source
from preprocessing.prepare import prepare

pytestmark = pytest.mark.real_data

# subjects, sessions (= recordings) and source rate per dataset, as ../shared/data/README.md states them
EXPECTED = {
    "3dc": (6, 6, 1000.0),          # Participant1-6, train half-session
    "coteallard": (40, 40, 200.0),  # 22 pre-training + 18 evaluation subjects, training0
    "francic": (5, 15, 200.0),      # 5 participants x 3 sessions
    "myodisco": (14, 14, 200.0),    # 14 subjects, day 1
    "ciil": (21, 105, 200.0),       # 21 subjects x (training + trial_1..4)
    "multiday": (1, 6, 2048.0),     # one subject, 6 days
}


@pytest.fixture(scope="module")
def real_jobs(data_root):
    return {manifest.name: manifest_jobs(manifest, root) for manifest, root in resolve_source(str(data_root))}


@pytest.fixture(scope="module")
def real_corpus(real_jobs, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "corpus.zarr"
    report = prepare([job for jobs in real_jobs.values() for job in jobs], out, workers=0, progress=False)
    assert report.failed == []
    return Corpus(out)


def test_all_six_datasets_with_the_documented_counts(real_corpus):
    rows = {row["dataset"]: row for row in corpus_summary(real_corpus)}
    assert set(rows) == set(EXPECTED)
    for dataset, (subjects, sessions, source_fs) in EXPECTED.items():
        row = rows[dataset]
        assert (row["subjects"], row["recordings"]) == (subjects, sessions), dataset
        assert row["source_fs"] == f"{source_fs:g}"
    assert check_corpus(real_corpus.path) == []


def test_labeled_segments_survive_resampling(real_corpus, real_jobs):
    target = HarmonizeConfig().target_fs
    for dataset, jobs in real_jobs.items():
        for job in (jobs[0], jobs[-1]):
            raw = job.load()
            stored = real_corpus.segments(job.key)
            assert len(stored) == len(raw.segments), job.key
            ratio = target / raw.fs
            for before, after in zip(raw.segments, stored):
                assert (after.label, after.label_name, after.rep) == (before.label, before.label_name, before.rep)
                assert abs(after.start - before.start * ratio) <= 1 and abs(after.stop - before.stop * ratio) <= 1
            entry = real_corpus.entry(job.key)
            assert abs(entry.n_samples - raw.n_samples * ratio) <= len(raw.joins) + 1


# ---------------------------------------------------------------- the evaluation's folds on every dataset

EVAL_WINDOWS = WindowConfig(kind="labeled", length_s=0.5, stride_s=0.25, margin_s=0.25)  # EvaluateConfig's
GAP_S = EVAL_WINDOWS.length_s + EVAL_WINDOWS.margin_s
SEEDS, BUDGETS = (0, 1, 2), (1.0, 5.0, 10.0, 100.0)


@pytest.fixture(scope="module")
def real_windows(real_corpus) -> dict[str, np.ndarray]:
    """The evaluation's labeled windows of every recording (identity and span; no tokens needed)."""
    columns: dict[str, list] = {c: [] for c in ("dataset", "subject", "session", "key", "start", "stop", "label",
                                                "rep", "fs")}
    for entry in real_corpus.entries:
        attrs = real_corpus.attrs(entry.key)
        spans = recording_spans(entry.n_samples, real_corpus.segments(entry.key), attrs["joins"], EVAL_WINDOWS,
                                attrs["rest_label"])
        w = cut_windows(spans, entry.fs, EVAL_WINDOWS)
        for name, value in (("dataset", entry.dataset), ("subject", entry.subject), ("session", entry.session),
                            ("key", entry.key), ("fs", entry.fs)):
            columns[name] += [value] * len(w)
        for name in ("start", "stop", "label", "rep"):
            columns[name] += getattr(w, name).tolist()
    return {k: np.asarray(v) for k, v in columns.items()}


def test_calibration_and_test_windows_never_share_a_sample(real_windows):
    """Every dataset, fold, seed and budget: no test window overlaps a calibration window, and windows cut from
    one segment (datasets without repetition ids) are at least a window plus the margin apart."""
    w = real_windows
    for dataset in EXPECTED:
        for fold in loso_folds(w, dataset, GAP_S):
            for seed in SEEDS:
                test = calibration_split(fold, 0, seed)[1]
                calib = calibration_split(fold, 100, seed)[0]  # the largest budget holds every smaller one
                for key in np.unique(w["key"][test]):
                    c = calib[w["key"][calib] == key]
                    t = test[w["key"][test] == key]
                    # distance between spans [start, stop): negative when they share samples
                    distance = np.maximum(w["start"][t][None, :] - w["stop"][c][:, None],
                                          w["start"][c][:, None] - w["stop"][t][None, :])
                    assert distance.size == 0 or distance.min() >= 0, (dataset, fold.held_out, seed, key)
                    same_segment = (w["label"][c][:, None] == w["label"][t][None, :]) & (w["rep"][c][:, None] < 0)
                    if same_segment.any():
                        assert distance[same_segment].min() >= GAP_S * w["fs"][t[0]], (dataset, fold.held_out)


def test_budgets_select_different_amounts(real_windows):
    """1 %, 5 % and 10 % select different calibration sets on every dataset whose pool holds more than one window
    per class at 10 %. MultiDay's held-out day holds ~2.5 s per class outside its test third and guard gaps, so 10 %
    is ~0.25 s, shorter than one 0.5 s window: its three budgets are the one-window-per-class minimum (README)."""
    w = real_windows
    for dataset in EXPECTED:
        n = {b: [] for b in BUDGETS}
        for fold in loso_folds(w, dataset, GAP_S):
            for seed in SEEDS:
                for b in BUDGETS:
                    n[b].append(calibration_split(fold, b, seed)[0].size)
        means = {b: np.mean(v) for b, v in n.items()}
        classes = np.unique(w["label"][w["dataset"] == dataset]).size
        if dataset == "multiday":
            assert means[1.0] == means[5.0] == means[10.0] == classes < means[100.0]
        else:
            assert means[1.0] < means[5.0] < means[10.0] < means[100.0], (dataset, means)
