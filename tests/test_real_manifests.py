"""The shipped manifests against the real datasets in ../shared/data (see its README).

Counts and labels below are taken from the data README, independently of the manifests.
Only a few recordings per dataset are read in full, to keep this under a few seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from preprocessing.manifest import DatasetManifest, ManifestJob, manifest_jobs, shipped_manifests
from preprocessing.recording import RawRecording

DATA_ROOT = Path(os.environ.get("AEMG_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")

pytestmark = [pytest.mark.real_data,
              pytest.mark.skipif(not DATA_ROOT.is_dir(), reason=f"real data folder {DATA_ROOT} is absent")]


@dataclass(frozen=True)
class Expected:
    subjects: int
    sessions: frozenset[str]
    recordings: int
    files_per_recording: frozenset[int]
    channels: int
    labels: dict[int, str]
    rest: int


EXPECTED = {
    "3dc": Expected(6, frozenset({"train"}), 6, frozenset({44}), 10, {
        0: "Neutral", 1: "Radial Deviation", 2: "Wrist Flexion", 3: "Ulnar Deviation", 4: "Wrist Extension",
        5: "Supination", 6: "Pronation", 7: "Power Grip", 8: "Open Hand", 9: "Chuck Grip", 10: "Pinch Grip"}, 0),
    "coteallard": Expected(40, frozenset({"training0"}), 40, frozenset({28}), 8, {
        0: "Neutral", 1: "Radial Deviation", 2: "Wrist Flexion", 3: "Ulnar Deviation", 4: "Wrist Extension",
        5: "Hand Close", 6: "Hand Open"}, 0),
    "francic": Expected(5, frozenset({"1", "2", "3"}), 15, frozenset({8}), 8, {
        0: "hibernation", 1: "flexion", 2: "extension", 3: "radial deviation", 4: "ulnar deviation",
        5: "pronation", 6: "supination", 7: "fist"}, 0),
    "myodisco": Expected(14, frozenset({"day1"}), 14, frozenset({200}), 8, {
        0: "double_tap", 1: "extension", 2: "finger_gun", 3: "flexion", 4: "hand_close", 5: "hand_open",
        6: "point", 7: "snap", 8: "thumbs_up", 9: "z_rest"}, 9),
    # The README's "0 Close, 1 Open, 2 Rest, 3 Flexion, 4 Extension", named as the recordings'
    # metadata.json names them, which swaps 3 and 4 (see configs/datasets/ciil.yaml).
    "ciil": Expected(21, frozenset({"training", "trial_1", "trial_2", "trial_3", "trial_4"}), 105, frozenset({25, 10}), 8, {
        0: "Hand_Close", 1: "Hand_Open", 2: "No_Motion", 3: "Wrist_Extension", 4: "Wrist_Flexion"}, 2),
    "multiday": Expected(1, frozenset({f"day{d}" for d in (1, 25, 49, 73, 97, 121)}), 6, frozenset({11}), 4, {
        0: "No Motion", 1: "Wrist Extension", 2: "Wrist Flexion", 3: "Wrist Adduction", 4: "Wrist Abduction",
        5: "Wrist Supination", 6: "Wrist Pronation", 7: "Hand Open", 8: "Hand Closed", 9: "Key Grip",
        10: "Index Point"}, 0),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def dataset(request: pytest.FixtureRequest) -> tuple[DatasetManifest, list[ManifestJob], Expected]:
    manifest = DatasetManifest.from_yaml(shipped_manifests()[request.param])
    if not (DATA_ROOT / manifest.folder).is_dir():
        pytest.skip(f"{manifest.folder} is not in {DATA_ROOT}")
    return manifest, manifest_jobs(manifest, DATA_ROOT), EXPECTED[request.param]


def test_counts_and_labels(dataset: tuple[DatasetManifest, list[ManifestJob], Expected]) -> None:
    manifest, jobs, expected = dataset
    assert len({job.subject for job in jobs}) == expected.subjects
    assert {job.session for job in jobs} == expected.sessions
    assert len(jobs) == len({job.key for job in jobs}) == expected.recordings
    assert {len(job.files) for job in jobs} == expected.files_per_recording
    assert manifest.labels == expected.labels and manifest.rest_label == expected.rest
    assert manifest.layout(DATA_ROOT / manifest.folder).n_channels == expected.channels


def test_coteallard_keeps_the_two_groups_of_people_apart() -> None:
    manifest = DatasetManifest.from_yaml(shipped_manifests()["coteallard"])
    if not (DATA_ROOT / manifest.folder).is_dir():
        pytest.skip("coteallard is absent")
    subjects = {job.subject for job in manifest_jobs(manifest, DATA_ROOT)}
    assert sum(s.startswith("PreTrainingDataset-") for s in subjects) == 22
    assert sum(s.startswith("EvaluationDataset-") for s in subjects) == 18


def test_a_few_recordings_load_fully(dataset: tuple[DatasetManifest, list[ManifestJob], Expected]) -> None:
    manifest, jobs, expected = dataset
    for job in (jobs[0], jobs[-1]):
        rec = job.load()
        assert rec.key == job.key and rec.emg.dtype == np.float32
        assert rec.n_channels == expected.channels and rec.fs == manifest.fs
        assert np.isfinite(rec.emg).all()  # none of the six datasets holds NaN/Inf
        starts = [s.start for s in rec.segments]
        assert starts == sorted(starts) and rec.segments[0].start == 0 and rec.segments[-1].stop == rec.n_samples
        assert all(a.stop == b.start for a, b in zip(rec.segments[:-1], rec.segments[1:]))  # files cover the recording
        assert {s.label for s in rec.segments} <= set(expected.labels)
        lengths = [_samples_in(DATA_ROOT / path, expected.channels) for path in rec.source_files]
        assert rec.joins == np.cumsum(lengths)[:-1].tolist()  # a join at every file boundary, counted independently
        if manifest.name == "francic":
            _check_francic_label_columns(rec)


def _samples_in(path: Path, channels: int) -> int:
    """Samples in one source file, counted without the readers: int16 frames or text lines."""
    if path.suffix == ".dat":
        return path.stat().st_size // (2 * channels)
    return path.read_bytes().rstrip(b"\r\n").count(b"\n") + 1  # no shipped manifest skips header rows


def _check_francic_label_columns(rec: RawRecording) -> None:
    """Each <g>.txt alternates between rest (0) and gesture g; 0.txt is rest only."""
    bounds = [0, *rec.joins, rec.n_samples]
    for path, start, stop in zip(rec.source_files, bounds[:-1], bounds[1:]):
        gesture = int(Path(path).stem)
        inside = {s.label for s in rec.segments if start <= s.start < stop}
        assert inside == ({0, gesture} if gesture else {0}), path
