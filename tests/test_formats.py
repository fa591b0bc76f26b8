"""Reader kinds for the common EMG file formats, channel maps and label sources, on files written in each
format's own layout (NinaPro .mat, MATLAB v7.3, HDF5, NumPy, WFDB, EDF/BDF, BIDS events, cue protocols)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from formats import edf_file, hdf5_file, mat73, ninapro_mat, wfdb_record
from preprocessing.errors import DataError, ManifestError
from preprocessing.manifest import DatasetManifest, manifest_jobs

RING4 = {"layout": "ring", "n_channels": 4}


def manifest(**fields: Any) -> DatasetManifest:
    spec = {"name": "toy", "folder": "toy", "pattern": "s{subject}/S{s}_E{session}_A1.mat",
            "reader": {"kind": "mat", "labels": "restimulus", "repetitions": "rerepetition"}, "fs": 200,
            "units": "uV", "electrodes": RING4, "labels": {0: "rest", 1: "fist", 2: "open"}, "rest_label": 0,
            "subject": "{subject}", "session": "E{session}", "group_by": ["subject", "session"]}
    spec.update(fields)
    return DatasetManifest.from_dict({k: v for k, v in spec.items() if v is not None}, source="toy.yaml")


def load_one(m: DatasetManifest, root: Path):
    jobs = manifest_jobs(m, root)
    assert len(jobs) == 1
    return jobs[0].load()


def ninapro_protocol(reps: int = 3, hold: int = 40, rest: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """restimulus / rerepetition as NinaPro writes them: rest 0 (repetition 0), each gesture `reps` times."""
    labels, repetitions = [np.zeros(rest)], [np.zeros(rest)]
    for gesture in (1, 2):
        for r in range(1, reps + 1):
            labels += [np.full(hold, gesture), np.zeros(rest)]
            repetitions += [np.full(hold, r), np.zeros(rest)]
    return np.concatenate(labels).astype(int), np.concatenate(repetitions).astype(int)


def signal(n: int, channels: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, channels)).astype(np.float32)


# --- MATLAB ---------------------------------------------------------------------------------


def test_ninapro_mat_with_label_and_repetition_vectors(tmp_path: Path) -> None:
    labels, reps = ninapro_protocol()
    emg = signal(labels.size)
    ninapro_mat(tmp_path / "toy" / "s1" / "S1_E1_A1.mat", emg, labels, reps)
    rec = load_one(manifest(), tmp_path)
    np.testing.assert_allclose(rec.emg, emg, rtol=1e-6)
    gestures = [(s.label, s.rep) for s in rec.segments if s.label]
    assert gestures == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    rests = [s for s in rec.segments if s.label == 0]
    assert [s.rep for s in rests] == list(range(7))  # repetition 0 means none: numbered by order
    assert rec.segments[1].start == 30 and rec.segments[1].stop == 70 and rec.segments[1].label_name == "fist"
    assert rec.key == "toy/1/E1" and rec.fs == 200


def test_mat_v73_struct_field_and_channels_by_row(tmp_path: Path) -> None:
    emg = signal(300)
    mat73(tmp_path / "toy" / "s2" / "S2_E1_A1.mat", {"data": {"emg": emg.T, "gesture": np.full(300, 2.0)}})
    m = manifest(reader={"kind": "mat", "emg": "data.emg", "orientation": "channels_samples",
                         "labels": "data.gesture"})
    rec = load_one(m, tmp_path)
    np.testing.assert_allclose(rec.emg, emg, rtol=1e-6)
    assert [(s.start, s.stop, s.label) for s in rec.segments] == [(0, 300, 2)]


@pytest.mark.parametrize("reader, variables, problem", [
    ({"emg": "EMG"}, {}, "has no MATLAB variable 'EMG'"),
    ({"emg": "emg.data"}, {}, "has no MATLAB variable 'emg.data'"),
    ({"orientation": "channels_samples"}, {}, r"shape \(250, 4\): read as channels_samples, 250 channels.*orientation"),
    ({}, {"restimulus": np.zeros((249, 1))}, "'restimulus' holds 249 values but the EMG has 250 samples"),
    ({}, {"restimulus": np.full((250, 1), 7.0)}, r"label 7 \(sample 0\) is not one of the dataset's labels"),
    ({}, {"restimulus": np.full((250, 1), 0.5)}, "'restimulus' holds a non-integer value 0.5"),
    ({}, {"emg": np.array(["text"])}, "'emg' is not a numeric array"),
])
def test_bad_mat_files_name_the_file(tmp_path: Path, reader: dict, variables: dict, problem: str) -> None:
    import scipy.io

    path = tmp_path / "toy" / "s1" / "S1_E1_A1.mat"
    path.parent.mkdir(parents=True)
    scipy.io.savemat(path, {"emg": signal(250), "restimulus": np.zeros((250, 1)), "rerepetition": np.zeros((250, 1)),
                            **variables})
    m = manifest(reader={"kind": "mat", "labels": "restimulus", "repetitions": "rerepetition", **reader})
    with pytest.raises(DataError, match=f"^{path}: .*{problem}"):
        load_one(m, tmp_path)


def test_a_file_that_is_not_a_mat_file(tmp_path: Path) -> None:
    path = tmp_path / "toy" / "s1" / "S1_E1_A1.mat"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a MATLAB file at all" * 10)
    with pytest.raises(DataError, match=f"^{path}: not a readable MATLAB file"):
        load_one(manifest(), tmp_path)


# --- HDF5 and NumPy -------------------------------------------------------------------------


def test_hdf5_rate_from_timestamps_and_a_compound_field(tmp_path: Path) -> None:
    import h5py

    emg = signal(400)
    hdf5_file(tmp_path / "toy" / "p1" / "run1.h5", emg, fs=512.0, labels=np.r_[np.zeros(200), np.ones(200)])
    m = manifest(pattern="p{subject}/run{session}.h5", fs=None, group_by=None, session="{session}",
                 reader={"kind": "hdf5", "emg": "/emg/data", "timestamps": "/emg/time", "labels": "labels"})
    rec = load_one(m, tmp_path)
    assert rec.fs == pytest.approx(512.0) and [(s.label, s.rep) for s in rec.segments] == [(0, 0), (1, 0)]
    np.testing.assert_allclose(rec.emg, emg)
    # the manifest's nominal rate is kept when the file's agrees; a disagreement names the file
    assert load_one(manifest(**{**_spec(m), "fs": 512.5}), tmp_path).fs == 512.5
    with pytest.raises(DataError, match=r"run1.h5: declares 512 Hz but the manifest's fs \(toy.yaml\) says 1000 Hz"):
        load_one(manifest(**{**_spec(m), "fs": 1000}), tmp_path)
    # emg2qwerty-style compound dataset: a field is one more path step
    table = np.zeros(400, dtype=[("time", "f8"), ("emg_left", "f4", (4,))])
    table["emg_left"] = emg
    with h5py.File(tmp_path / "toy" / "p1" / "run1.h5", "w") as f:
        f.create_dataset("session/timeseries", data=table)
    rec = load_one(manifest(**{**_spec(m), "fs": 2000, "cue": {"sequence": [1], "gesture_s": 0.1, "rest_s": 0.0},
                               "reader": {"kind": "hdf5", "emg": "session/timeseries/emg_left"}}), tmp_path)
    np.testing.assert_allclose(rec.emg, emg)


def _spec(m: DatasetManifest) -> dict:
    """The fields `manifest()` takes back from a manifest (enough to vary one of them)."""
    return {"pattern": m.pattern, "fs": m.fs, "session": m.session, "group_by": list(m.group_by),
            "reader": {"kind": "hdf5", "emg": "/emg/data", "timestamps": "/emg/time", "labels": "labels"}}


def test_hdf5_bad_inputs(tmp_path: Path) -> None:
    import h5py

    path = hdf5_file(tmp_path / "toy" / "p1" / "run1.h5", signal(100), fs=512.0, labels=np.zeros(99))
    m = manifest(pattern="p{subject}/run{session}.h5", group_by=None, session="{session}",
                 reader={"kind": "hdf5", "emg": "/emg/data", "labels": "labels"})
    with pytest.raises(DataError, match=f"^{path}: 'labels' holds 99 values but the EMG has 100 samples"):
        load_one(m, tmp_path)
    with h5py.File(path, "a") as f:
        del f["labels"]
        f["labels"] = np.zeros(100)
        f["emg/time"][50] = f["emg/time"][49]
    with pytest.raises(DataError, match=f"^{path}: has no HDF5 dataset 'emg/missing'"):
        load_one(manifest(**{**_spec(m), "reader": {"kind": "hdf5", "emg": "emg/missing"}, "cue": _CUE}), tmp_path)
    with pytest.raises(DataError, match=f"^{path}: timestamps '/emg/time' are not finite and strictly increasing"):
        load_one(manifest(**{**_spec(m), "fs": None}), tmp_path)


_CUE = {"sequence": [1], "gesture_s": 0.1, "rest_s": 0.0}


def test_numpy_npy_and_npz(tmp_path: Path) -> None:
    emg = signal(300)
    folder = tmp_path / "toy" / "p1"
    folder.mkdir(parents=True)
    np.save(folder / "run1.npy", emg.T)
    m = manifest(pattern="p{subject}/run{session}.npy", group_by=None, session="{session}", cue=_CUE,
                 reader={"kind": "numpy", "orientation": "channels_samples"})
    np.testing.assert_allclose(load_one(m, tmp_path).emg, emg)
    (folder / "run1.npy").unlink()
    np.savez(folder / "run1.npz", emg=emg, y=np.r_[np.ones(150), np.full(150, 2)])
    rec = load_one(manifest(pattern="p{subject}/run{session}.npz", group_by=None, session="{session}",
                            reader={"kind": "numpy", "labels": "y"}), tmp_path)
    assert [(s.start, s.label) for s in rec.segments] == [(0, 1), (150, 2)]
    np.savez(folder / "run1.npz", emg=np.array([{"pickled": 1}], dtype=object))
    with pytest.raises(DataError, match="run1.npz: not a readable NumPy file"):
        load_one(manifest(pattern="p{subject}/run{session}.npz", group_by=None, session="{session}", cue=_CUE,
                          reader={"kind": "numpy"}), tmp_path)


# --- WFDB and EDF/BDF: rate and channel names from the file ----------------------------------


def test_wfdb_record_rate_and_channels_by_name(tmp_path: Path) -> None:
    emg = signal(2048, channels=6)
    names = ["F1", "F2", "F3", "W1", "W2", "ECG"]
    hea = wfdb_record(tmp_path / "toy" / "session1_participant1", "session1_participant1_gesture2_trial1", emg,
                      2048, names)
    m = manifest(pattern="session{session}_participant{subject}/session{s}_participant{p}_gesture{label}_trial{rep}.hea",
                 reader={"kind": "wfdb"}, fs=None, channels=["W2", "F1", "F2", "W1"], group_by=None, session="{session}")
    rec = load_one(m, tmp_path)
    assert rec.fs == 2048 and [(s.label, s.rep) for s in rec.segments] == [(2, 1)]
    np.testing.assert_allclose(rec.emg, emg[:, [4, 0, 1, 3]], atol=2e-3)  # 16-bit ADC quantization
    with pytest.raises(DataError, match=r"has no channel named \['W9'\]"):
        load_one(manifest(**{**_spec_wfdb(m), "channels": ["W9", "F1", "F2", "W1"]}), tmp_path)
    with pytest.raises(DataError, match=r"^.*trial1.hea: 'signals' has shape \(2048, 6\).*needs 4"):
        load_one(manifest(**{**_spec_wfdb(m), "channels": None}), tmp_path)
    dat = hea.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:-12])
    with pytest.raises(DataError, match=f"^{dat}: holds .* bytes but its header"):
        load_one(m, tmp_path)


def _spec_wfdb(m: DatasetManifest) -> dict:
    return {"pattern": m.pattern, "reader": {"kind": "wfdb"}, "fs": None, "group_by": None, "session": "{session}"}


@pytest.mark.parametrize("suffix", [".edf", ".bdf"])
def test_edf_and_bdf_fastest_signals_with_their_names(tmp_path: Path, suffix: str) -> None:
    emg = signal(1000)
    path = edf_file(tmp_path / "toy" / "p1" / f"run1{suffix}", emg, 500.0, ["EMG 1", "EMG 2", "EMG 3", "EMG 4"])
    m = manifest(pattern=f"p{{subject}}/run{{session}}{suffix}", reader={"kind": "edf"}, fs=None, group_by=None,
                 session="{session}", cue=_CUE)
    rec = load_one(m, tmp_path)
    assert rec.fs == 500 and rec.emg.shape == (1000, 4)
    np.testing.assert_allclose(rec.emg, emg, atol=np.abs(emg).max() * (1e-4 if suffix == ".edf" else 1e-6))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DataError, match=f"^{path}: not a readable {suffix[1:].upper()} file"):
        load_one(m, tmp_path)


# --- channel maps ---------------------------------------------------------------------------


def test_96_columns_whose_first_64_are_a_16x4_grid_in_column_order(tmp_path: Path) -> None:
    """A 96-column export: columns 0-63 hold a 16 x 4 grid wired column by column (column c, row r at
    c * 16 + r), the rest other signals; a map file puts every electrode where the layout has it."""
    n = 100
    table = signal(n, channels=96)
    folder = tmp_path / "toy"
    (folder / "p1").mkdir(parents=True)
    np.save(folder / "p1" / "run1.npy", table)
    rows = ["row,col,column"] + [f"{r},{c},{c * 16 + r}" for r in range(16) for c in range(4)]
    (folder / "grid_map.csv").write_text("\n".join(rows) + "\n")
    grid = {"layout": "grid", "rows": 16, "cols": 4, "pitch_mm": 8}
    m = manifest(pattern="p{subject}/run{session}.npy", group_by=None, session="{session}", cue=_CUE,
                 reader={"kind": "numpy"}, electrodes=grid, channels="grid_map.csv", file_channels=96)
    rec = load_one(m, tmp_path)
    assert rec.emg.shape == (n, 64)
    for channel in (0, 1, 5, 63):  # layout channel = row * 4 + col (row-major)
        r, c = divmod(channel, 4)
        np.testing.assert_array_equal(rec.emg[:, channel], table[:, c * 16 + r])
    # the same with a range: the first 64 columns as they come
    rec = load_one(manifest(**{**_spec_npy(m), "channels": "0:64"}), tmp_path)
    np.testing.assert_array_equal(rec.emg, table[:, :64])
    with pytest.raises(DataError, match="holds 96 columns|96 channels, but the electrode layout needs 90"):
        load_one(manifest(**{**_spec_npy(m), "file_channels": 90}), tmp_path)
    (folder / "grid_map.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(DataError, match=r"grid_map.csv: maps no column to layout channel\(s\) \[63\]"):
        load_one(m, tmp_path)


def _spec_npy(m: DatasetManifest) -> dict:
    return {"pattern": m.pattern, "group_by": None, "session": "{session}", "cue": _CUE, "reader": {"kind": "numpy"},
            "electrodes": {"layout": "grid", "rows": 16, "cols": 4, "pitch_mm": 8}, "channels": "grid_map.csv",
            "file_channels": 96}


def test_delimited_columns_by_index(tmp_path: Path) -> None:
    table = signal(50, channels=6)
    path = tmp_path / "toy" / "p1" / "run1.csv"
    path.parent.mkdir(parents=True)
    np.savetxt(path, table, delimiter=",")
    m = manifest(pattern="p{subject}/run{session}.csv", group_by=None, session="{session}", cue=_CUE,
                 reader={"kind": "delimited", "delimiter": ","}, channels=[5, 0, 2, 1], file_channels=6)
    np.testing.assert_allclose(load_one(m, tmp_path).emg, table[:, [5, 0, 2, 1]], rtol=1e-6)


# --- label sources: events tables and cue protocols -----------------------------------------


def bids(tmp_path: Path, events: str, n: int = 1000) -> tuple[DatasetManifest, Path]:
    folder = tmp_path / "toy" / "sub-01" / "emg"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "sub-01_task-gestures_emg.npy", signal(n))
    (folder / "sub-01_task-gestures_events.tsv").write_text(events)
    m = manifest(pattern="sub-{subject}/emg/sub-{s}_task-{session}_emg.npy", reader={"kind": "numpy"}, group_by=None,
                 session="{session}", events={"path": "{dir}/sub-{s}_task-{session}_events.tsv"})
    return m, folder / "sub-01_task-gestures_events.tsv"


def test_bids_events_table(tmp_path: Path) -> None:
    m, _ = bids(tmp_path, "onset\tduration\ttrial_type\n0.5\t1.0\tfist\n2\t1\topen\n3.5\t0.5\t1\n")
    rec = load_one(m, tmp_path)
    assert [(s.start, s.stop, s.label, s.rep) for s in rec.segments] == [
        (100, 300, 1, 0), (400, 600, 2, 0), (700, 800, 1, 1)]


@pytest.mark.parametrize("events, problem", [
    ("onset\tduration\ttrial_type\n0.5\t1\twave\n", r"line 2: label 'wave' is not one of the dataset's labels"),
    ("onset\tduration\ttrial_type\n4.5\t1\tfist\n", r"line 2: event \[4.5, 5.5\) s is empty or outside the recording"),
    ("onset\tduration\ttrial_type\n0\t2\tfist\n1\t1\topen\n", "events at samples 0 and 200 overlap"),
    ("onset\tduration\ttrial_type\n0\tn/a\tfist\n", "line 2: duration 'n/a' is not a number"),
    ("onset\ttrial_type\n0\tfist\n", "has no column 'duration'"),
])
def test_bad_events_tables_name_the_table(tmp_path: Path, events: str, problem: str) -> None:
    m, table = bids(tmp_path, events)
    with pytest.raises(DataError, match=f"^{table}: {problem}"):
        load_one(m, tmp_path)


def test_cue_protocol_turns_timing_into_segments(tmp_path: Path) -> None:
    folder = tmp_path / "toy" / "p1"
    folder.mkdir(parents=True)
    np.save(folder / "run1.npy", signal(2 * 200 + 2 * 3 * 200))  # 2 s rest, then 3 x (0.5 s gesture + 0.5 s rest) x 2
    cue = {"initial_rest_s": 2, "sequence": [2, 1], "gesture_s": 0.5, "rest_s": 0.5, "repetitions": 3}
    m = manifest(pattern="p{subject}/run{session}.npy", group_by=None, session="{session}", reader={"kind": "numpy"},
                 cue=cue)
    segments = load_one(m, tmp_path).segments
    assert (segments[0].start, segments[0].stop, segments[0].label) == (0, 400, 0)
    assert [(s.label, s.rep) for s in segments[1::2]] == [(2, 0), (2, 1), (2, 2), (1, 0), (1, 1), (1, 2)]
    assert (segments[1].start, segments[1].stop, segments[2].stop) == (400, 500, 600)
    by_sequence = load_one(manifest(**{**_spec_cue(m), "cue": {**cue, "order": "sequence"}}), tmp_path).segments
    assert [(s.label, s.rep) for s in by_sequence[1::2]] == [(2, 0), (1, 0), (2, 1), (1, 1), (2, 2), (1, 2)]
    with pytest.raises(DataError, match="run1.npy: the cue protocol lasts 9 s but the file holds 8 s"):
        load_one(manifest(**{**_spec_cue(m), "cue": {**cue, "initial_rest_s": 3}}), tmp_path)


def _spec_cue(m: DatasetManifest) -> dict:
    return {"pattern": m.pattern, "group_by": None, "session": "{session}", "reader": {"kind": "numpy"}}


# --- manifest checks of the new fields ------------------------------------------------------


@pytest.mark.parametrize("fields, problem", [
    ({"cue": _CUE}, "more than one label source: the reader's labels and `cue`"),
    ({"reader": {"kind": "mat"}, "cue": {"sequence": [5], "gesture_s": 1, "rest_s": 1}}, r"sequence holds \[5\]"),
    ({"reader": {"kind": "mat"}, "cue": {**_CUE, "rest_s": 1}, "rest_label": None}, "give `rest_label`"),
    ({"reader": {"kind": "mat"}}, "no label source"),
    ({"reader": {"kind": "mat", "repetitions": "rerepetition"}}, "reader.repetitions needs reader.labels"),
    ({"reader": {"kind": "mat", "labels": "y", "orientation": "rows"}}, "reader.orientation must be one of"),
    ({"fs": None}, r"missing required field\(s\) \['fs'\]"),
    ({"channels": [0, 0, 1, 2]}, r"field `channels`: \[0\] selected more than once"),
    ({"channels": "0:0"}, "selects no column"),
    ({"channels": [1, "a"]}, "field `channels`: expected column indices"),
    ({"file_channels": 8}, "only meaningful with `channels`"),
    ({"reader": {"kind": "binary"}, "pattern": "s{subject}/S{s}_E{session}_{label}.bin", "channels": [0, 1, 2, 3]},
     "raw binary with a `channels` map needs"),
    ({"reader": {"kind": "mat"}, "events": {"path": "{nope}.tsv"}}, "field `events`: path '{nope}.tsv' uses 'nope'"),
    ({"reader": {"kind": "mat"}, "events": {"path": "e.tsv", "units": "ms"}}, "units must be one of"),
])
def test_bad_manifest_fields(fields: dict, problem: str) -> None:
    with pytest.raises(ManifestError, match=f"^toy.yaml: .*{problem}"):
        manifest(**fields)


def test_readme_matlab_manifest_reads_a_ninapro_layout(tmp_path: Path) -> None:
    """The README's MATLAB example manifest, on files laid out as NinaPro DB2 lays them out."""
    import re

    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"name: ninapro_db2\n.*?```", readme, re.S).group(0).rstrip("`")
    m = DatasetManifest.from_dict(yaml.safe_load(block), source="README.md")
    labels, reps = ninapro_protocol()
    labels[labels == 2] = 3
    for exercise in (1, 2):
        ninapro_mat(tmp_path / "ninapro_db2" / "DB2_s1" / f"S1_E{exercise}_A1.mat", signal(labels.size, 12), labels,
                    reps)
    jobs = manifest_jobs(m, tmp_path)
    assert [j.key for j in jobs] == ["ninapro_db2/1/E1", "ninapro_db2/1/E2"]
    rec = jobs[0].load()
    assert rec.emg.shape == (labels.size, 12) and [(s.label, s.rep) for s in rec.segments if s.label][:4] == [
        (1, 1), (1, 2), (1, 3), (3, 1)]
