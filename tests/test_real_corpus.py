"""The six shared datasets through manifests -> harmonization -> corpus (real_data)."""

from __future__ import annotations

import pytest

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
