"""Dataset manifests and readers on tiny fake datasets written to tmp_path."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from preprocessing.errors import DataError, ManifestError
from preprocessing.manifest import (DatasetManifest, manifest_jobs, resolve_source, shipped_manifests,
                                    validate_segments)
from preprocessing.recording import Segment

RING4 = {"layout": "ring", "n_channels": 4}
LABELS = {0: "Rest", 1: "Fist", 2: "Open", 10: "Pinch"}


def manifest(**fields: Any) -> DatasetManifest:
    """A manifest for a 4-channel comma-separated toy dataset, with `fields` overriding."""
    spec = {"name": "toy", "folder": "toy", "pattern": "{subject}/{session}/g_{rep}_{label}.csv",
            "reader": {"kind": "delimited", "delimiter": ","}, "fs": 1000, "units": "uV",
            "electrodes": RING4, "labels": LABELS, "rest_label": 0}
    spec.update(fields)
    return DatasetManifest.from_dict({k: v for k, v in spec.items() if v is not None}, source="toy.yaml")


def write_csv(path: Path, rows: np.ndarray, delimiter: str = ",", header: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [delimiter.join(f"{v:g}" for v in row) for row in np.atleast_2d(rows)]
    path.write_text(header + "\n".join(lines) + "\n")


def toy_signal(n: int, value: float, channels: int = 4) -> np.ndarray:
    return value + np.arange(n * channels, dtype=np.float32).reshape(n, channels) / 1000


def only_job(m: DatasetManifest, root: Path):
    jobs = manifest_jobs(m, root)
    assert len(jobs) == 1
    return jobs[0]


# --- the three reader kinds -----------------------------------------------------------------


def test_delimited_dataset_one_recording_per_session(tmp_path: Path) -> None:
    lengths = {}
    for subject in ("P1", "P2"):
        for session in ("train", "test"):
            for rep in (0, 1):
                for label in (0, 2, 10):  # 10 sorts after 2 numerically, not as text
                    n = 30 + 10 * rep + label
                    lengths[(subject, session, rep, label)] = n
                    path = tmp_path / "toy" / subject / session / f"g_{rep}_{label}.csv"
                    write_csv(path, toy_signal(n, 100 * rep + label))
    jobs = manifest_jobs(manifest(), tmp_path)
    assert [j.key for j in jobs] == ["toy/P1/test", "toy/P1/train", "toy/P2/test", "toy/P2/train"]
    rec = jobs[1].load()
    assert rec.key == jobs[1].key and (rec.subject, rec.session) == ("P1", "train")
    order = [(0, 0), (0, 2), (0, 10), (1, 0), (1, 2), (1, 10)]
    sizes = [lengths[("P1", "train", rep, label)] for rep, label in order]
    assert [(s.rep, s.label) for s in rec.segments] == order
    assert [s.label_name for s in rec.segments[:3]] == ["Rest", "Open", "Pinch"]
    starts = np.cumsum([0] + sizes[:-1]).tolist()
    assert [(s.start, s.stop) for s in rec.segments] == list(zip(starts, np.cumsum(sizes).tolist()))
    assert rec.joins == starts[1:] and rec.pieces() == [(s.start, s.stop) for s in rec.segments]
    assert rec.emg.dtype == np.float32 and rec.emg.shape == (sum(sizes), 4)
    np.testing.assert_allclose(rec.emg[starts[2]:starts[3]], toy_signal(sizes[2], 10), rtol=1e-6)
    assert rec.fs == 1000 and rec.units == "uV" and rec.rest_label == 0 and rec.label_names == LABELS
    assert rec.layout.n_channels == 4 and rec.source_files[0] == "toy/P1/train/g_0_0.csv"


def test_whitespace_delimiter_and_header_rows(tmp_path: Path) -> None:
    write_csv(tmp_path / "toy" / "S0_D3_C1.txt", toy_signal(20, 5), delimiter="  ",
              header="time-aligned export\nch0 ch1 ch2 ch3\n")
    m = manifest(pattern="{subject}_D{day}_C{label}.txt", session="day{day}",
                 reader={"kind": "delimited", "skip_header": 2})
    rec = only_job(m, tmp_path).load()
    assert rec.key == "toy/S0/day3" and rec.n_samples == 20 and rec.segments[0].rep == -1
    np.testing.assert_allclose(rec.emg, toy_signal(20, 5), rtol=1e-6)


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_binary_reader_with_derived_fields_and_subject_template(tmp_path: Path, byteorder: str) -> None:
    dtype = np.dtype("int16").newbyteorder("<" if byteorder == "little" else ">")
    for split in ("Pre", "Eval"):
        for index in (0, 1, 3, 4):  # label index % 3, rep index // 3
            folder = tmp_path / "toy" / split / "Female0" / "training0"
            folder.mkdir(parents=True, exist_ok=True)
            (np.arange(40, dtype=np.int16).reshape(10, 4) * (index + 1)).astype(dtype).tofile(folder / f"classe_{index}.dat")
    m = manifest(pattern="{split}/{who}/{session}/classe_{index}.dat", derived={"label": "index % 3", "rep": "index // 3"},
                 subject="{split}-{who}", reader={"kind": "binary", "dtype": "int16", "byteorder": byteorder},
                 labels={0: "Rest", 1: "Fist", 2: "Open"}, adc_range=[-128, 127])
    jobs = manifest_jobs(m, tmp_path)
    # the same folder name in two splits is two people
    assert [j.key for j in jobs] == ["toy/Eval-Female0/training0", "toy/Pre-Female0/training0"]
    rec = jobs[0].load()
    assert [(s.label, s.rep) for s in rec.segments] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    np.testing.assert_array_equal(rec.emg[10:20], np.arange(40).reshape(10, 4) * 2)  # classe_1 comes second
    assert rec.adc_range == (-128.0, 127.0)


def test_label_column_segments_and_reps(tmp_path: Path) -> None:
    folder = tmp_path / "toy" / "readings" / "7-1"
    labels = {"0.txt": [0] * 6, "1.txt": [0, 0, 1, 1, 1, 0, 0, 1], "2.txt": [0, 2, 2, 0]}
    for name, column in labels.items():
        write_csv(folder / name, np.column_stack([toy_signal(len(column), 1), column]))
    m = manifest(pattern="readings/{subject}-{session}/{gesture}.txt", reader={"kind": "label_column", "delimiter": ","})
    rec = only_job(m, tmp_path).load()
    assert rec.key == "toy/7/1" and rec.joins == [6, 14] and rec.n_channels == 4
    got = [(s.start, s.stop, s.label, s.rep) for s in rec.segments]
    assert got == [(0, 6, 0, 0), (6, 8, 0, 1), (8, 11, 1, 0), (11, 13, 0, 2), (13, 14, 1, 1),
                   (14, 15, 0, 3), (15, 17, 2, 0), (17, 18, 0, 4)]  # cut at every change and at every join


def test_metadata_labels_are_matched_by_file_name_and_checked(tmp_path: Path) -> None:
    folder = tmp_path / "toy" / "S1" / "day1"
    for label in (0, 1):
        write_csv(folder / f"R_0_C_{label}.csv", toy_signal(12, label))
    metadata = {"continuous": False,  # flags beside the entries are not files
                "data/S9/static/R_0_C_0.csv": {"class_idx": 0, "class_name": "Rest"},
                "data/S9/static/R_0_C_1.csv": {"class_idx": 1, "class_name": "Fist"}}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    m = manifest(pattern="{subject}/{session}/R_{rep}_C_{label}.csv", label_names_from="metadata.json")
    assert [s.label_name for s in only_job(m, tmp_path).load().segments] == ["Rest", "Fist"]

    metadata["data/S9/static/R_0_C_1.csv"]["class_name"] = "Open"
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(DataError, match=r"R_0_C_1\.csv: metadata.json names class 1 'Open' but the manifest calls it"):
        only_job(m, tmp_path).load()

    metadata["data/S9/static/R_0_C_1.csv"] = {"class_idx": 2, "class_name": "Open"}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(DataError, match="says class 2 but the file name says 1"):
        only_job(m, tmp_path).load()

    del metadata["data/S9/static/R_0_C_1.csv"]
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(DataError, match=r"R_0_C_1\.csv: has no class_idx"):
        only_job(m, tmp_path).load()


def test_job_is_picklable_and_loads_after_a_round_trip(tmp_path: Path) -> None:
    write_csv(tmp_path / "toy" / "P1" / "s1" / "g_0_1.csv", toy_signal(8, 1))
    job = pickle.loads(pickle.dumps(only_job(manifest(), tmp_path)))
    assert job.load().key == job.key == "toy/P1/s1"


def test_ids_are_made_filesystem_and_zarr_safe(tmp_path: Path) -> None:
    write_csv(tmp_path / "toy" / "Subject 1" / "day:1" / "g_0_1.csv", toy_signal(8, 1))
    assert only_job(manifest(), tmp_path).key == "toy/Subject_1/day_1"


def test_nan_samples_are_kept_for_harmonization(tmp_path: Path) -> None:
    path = tmp_path / "toy" / "P1" / "s1" / "g_0_1.csv"
    path.parent.mkdir(parents=True)
    path.write_text("1,2,3,4\nnan,2,inf,4\n1,2,3,-inf\n")
    emg = only_job(manifest(), tmp_path).load().emg
    assert np.isnan(emg[1, 0]) and np.isinf(emg[1, 2]) and emg.shape == (3, 4)


def test_excluded_and_foreign_files_are_not_data(tmp_path: Path) -> None:
    write_csv(tmp_path / "toy" / "P1" / "s1" / "g_0_1.csv", toy_signal(8, 1))
    (tmp_path / "toy" / "electrodes.json").write_text(json.dumps(RING4))  # other extension: not data
    write_csv(tmp_path / "toy" / "P1" / "notes.csv", toy_signal(2, 0))
    with pytest.raises(DataError, match=r"notes\.csv: has the data files' extension but does not match"):
        manifest_jobs(manifest(), tmp_path)
    assert len(manifest_jobs(manifest(exclude=["*/notes.csv"]), tmp_path)) == 1


def test_electrodes_json_in_the_dataset_folder(tmp_path: Path) -> None:
    write_csv(tmp_path / "toy" / "P1" / "s1" / "g_0_1.csv", toy_signal(8, 1))
    m = manifest(electrodes="electrodes.json")
    with pytest.raises(DataError, match=r"electrodes\.json: electrode layout file not found"):
        manifest_jobs(m, tmp_path)
    (tmp_path / "toy" / "electrodes.json").write_text(json.dumps({"device": "x", **RING4}))
    assert only_job(m, tmp_path).load().layout.n_channels == 4


# --- bad data: a DataError naming the file and the problem ------------------------------------


@pytest.mark.parametrize(("content", "problem"), [
    # the file's own line numbers, not numpy's data-row count (blank lines and the header are lines too)
    ("1,2,3,4\n\n5,6,7\n", r"malformed text \(line 3 has 3 columns, the first data line 4"),
    ("1,2,3,4\n5,x,7,8\n", r"malformed text \(line 2, column 2: 'x' is not a number"),
    ("ch0,ch1,ch2,ch3\n1,2,3,4\n", r"malformed text \(line 1, column 1: 'ch0' is not a number"),  # a header row
    ("", "empty file"),
    ("1,2,3\n4,5,6\n", "3 columns, but the electrode layout needs 4 channels"),
    ("nan,nan,nan,nan\nnan,inf,nan,nan\n", "no finite value in the whole file"),
    (b"\xff\xfe\x00\x01", "not a text file"),
])
def test_bad_text_files(tmp_path: Path, content: str | bytes, problem: str) -> None:
    path = tmp_path / "toy" / "P1" / "s1" / "g_0_1.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=problem) as err:
        only_job(manifest(), tmp_path).load()
    assert err.value.where == str(path)


@pytest.mark.parametrize(("n_bytes", "problem"), [(0, "empty file"), (8 * 5 + 3, "truncated or corrupt: 43 bytes")])
def test_bad_binary_files(tmp_path: Path, n_bytes: int, problem: str) -> None:
    path = tmp_path / "toy" / "P1" / "s1" / "g_0_1.dat"
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(n_bytes))
    m = manifest(pattern="{subject}/{session}/g_{rep}_{label}.dat", reader={"kind": "binary", "dtype": "int16"})
    with pytest.raises(DataError, match=problem) as err:
        only_job(m, tmp_path).load()
    assert err.value.where == str(path)


@pytest.mark.parametrize(("column", "problem"), [
    ([0, 5, 5], "label 5 \\(sample 1\\) is not one of the dataset's labels"),
    ([0, 1.5, 1], "label column holds a non-integer value 1.5 at sample 1"),
])
def test_bad_label_columns(tmp_path: Path, column: list[float], problem: str) -> None:
    write_csv(tmp_path / "toy" / "r" / "1-1" / "3.txt", np.column_stack([toy_signal(3, 0), column]))
    m = manifest(pattern="r/{subject}-{session}/{gesture}.txt", reader={"kind": "label_column", "delimiter": ","})
    with pytest.raises(DataError, match=problem):
        only_job(m, tmp_path).load()


@pytest.mark.parametrize(("name", "problem"), [
    ("g_0_7.csv", r"g_0_7\.csv: label 7 is not one of the dataset's labels"),
    ("g_0_x.csv", r"g_0_x\.csv: field label is 'x', not an integer"),
    ("g_one_1.csv", "field rep is 'one', not an integer"),
])
def test_bad_file_names_fail_before_reading(tmp_path: Path, name: str, problem: str) -> None:
    (tmp_path / "toy" / "P1" / "s1").mkdir(parents=True)
    (tmp_path / "toy" / "P1" / "s1" / name).write_text("not read")
    with pytest.raises(DataError, match=problem):
        manifest_jobs(manifest(), tmp_path)


def test_missing_folder_and_no_match(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder of toy not found"):
        manifest_jobs(manifest(), tmp_path)
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "readme.md").write_text("nothing here")
    with pytest.raises(DataError, match="no file matches the pattern"):
        manifest_jobs(manifest(), tmp_path)


def test_a_file_that_yields_no_subject(tmp_path: Path) -> None:
    write_csv(tmp_path / "toy" / "s1" / "_g_0_1.csv", toy_signal(4, 0))
    m = manifest(pattern="{session}/{subject}_g_{rep}_{label}.csv", field_regex={"subject": "[^/]*"})
    with pytest.raises(DataError, match=r"_g_0_1\.csv: matches the pattern but yields no usable subject id"):
        manifest_jobs(m, tmp_path)


def test_two_groups_cannot_share_a_recording_key(tmp_path: Path) -> None:
    write_csv(tmp_path / "toy" / "P 1" / "s1" / "g_0_1.csv", toy_signal(4, 0))
    write_csv(tmp_path / "toy" / "P_1" / "s1" / "g_0_1.csv", toy_signal(4, 0))
    with pytest.raises(DataError, match="two groups of files map to the same recording toy/P_1/s1"):
        manifest_jobs(manifest(), tmp_path)


def test_derived_division_by_zero_names_the_file(tmp_path: Path) -> None:
    write_csv(tmp_path / "toy" / "P1" / "s1" / "c_0.csv", toy_signal(4, 0))
    m = manifest(pattern="{subject}/{session}/c_{index}.csv", derived={"label": "7 % index"})
    with pytest.raises(DataError, match=r"c_0\.csv: derived field label"):
        manifest_jobs(m, tmp_path)


def test_validate_segments() -> None:
    validate_segments([Segment(5, 10, 1, "a"), Segment(0, 5, 0, "r")], 10, "rec")
    for bad, problem in [([Segment(0, 11, 0, "r")], "outside the recording of 10"), ([Segment(3, 3, 0, "r")], "empty"),
                         ([Segment(0, 6, 0, "r"), Segment(5, 9, 1, "a")], "overlap")]:
        with pytest.raises(DataError, match=problem):
            validate_segments(bad, 10, "rec")


# --- manifest validation: ManifestError naming the manifest and the field --------------------


@pytest.mark.parametrize(("fields", "problem"), [
    ({"fs": None}, r"missing required field\(s\) \['fs'\]"),
    ({"fs": 0}, "field `fs`: 0 Hz is absurd"),
    ({"fs": -200}, "field `fs`: -200 Hz is absurd"),
    ({"fs": 10}, "field `fs`: 10 Hz is absurd"),
    ({"fs": 2e5}, "field `fs`: 200000.0 Hz is absurd"),
    ({"fs": "fast"}, "field `fs`: expected a number"),
    ({"subject": "{who}"}, r"field `subject`: uses \{who\}"),
    ({"pattern": "{person}/{session}/g_{rep}_{label}.csv"}, r"field `subject`: uses \{subject\}.*give a `subject` template"),
    ({"pattern": "{subject}/g_{rep}_{label}.csv"}, r"field `session`: uses \{session\}.*a constant is fine"),
    ({"pattern": "{subject}/{subject}_{label}.csv"}, "appear more than once"),
    ({"pattern": "/abs/{subject}/{session}/{label}.csv"}, "field `pattern`: .* must be a relative path"),
    ({"folder": "../elsewhere"}, "field `folder`"),
    ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"rest_label": 3}, "field `rest_label`: 3 is not one of the labels"),
    ({"labels": {"zero": "Rest"}}, "field `labels`: id 'zero' is not an integer"),
    ({"labels": {0: ""}}, "field `labels`: id 0 needs a name"),
    ({"reader": {"kind": "parquet"}}, "field `reader`: unknown reader kind 'parquet'"),
    ({"reader": {"kind": "delimited", "sep": ","}}, "field `reader`: reader kind 'delimited' takes options"),
    ({"reader": {"kind": "delimited", "delimiter": ",,"}}, "reader.delimiter must be one character"),
    ({"reader": {"kind": "binary", "dtype": "str"}}, "reader.dtype must be a numpy integer or float type"),
    ({"pattern": "{subject}/{session}/g_{rep}.csv"}, "no label source"),
    ({"reader": {"kind": "label_column"}}, "a label-column reader supplies the labels"),
    ({"electrodes": {"layout": "ring"}}, "field `electrodes`: ring layout needs"),
    ({"adc_range": [127, -128]}, "field `adc_range`"),
    ({"group_by": ["subject"]}, r"field `group_by`: the subject/session templates use \['session'\]"),
    ({"field_regex": {"subject": "("}}, "field `field_regex`: subject: bad regular expression"),
])
def test_bad_manifests(fields: dict, problem: str) -> None:
    with pytest.raises(ManifestError, match=f"^toy.yaml: .*{problem}"):
        manifest(**fields)


@pytest.mark.parametrize("expression", ["__import__('os').system('echo owned')", "index ** 2", "index / 7",
                                        "abs(index)", "index.real", "-index", "index if index else 1", "1.5 * index"])
def test_derived_expressions_are_whitelisted_not_evaluated(expression: str) -> None:
    with pytest.raises(ManifestError, match="field `derived`: label = .*only integers, field names"):
        manifest(pattern="{subject}/{session}/c_{index}.csv", derived={"label": expression})


def test_derived_expression_must_use_pattern_fields() -> None:
    with pytest.raises(ManifestError, match=r"uses \['rep'\], not fields of the pattern"):
        manifest(pattern="{subject}/{session}/c_{index}.csv", derived={"label": "rep % 7"})


def test_from_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nfs: [oops\n")
    with pytest.raises(ManifestError, match=f"^{path}: not valid YAML"):
        DatasetManifest.from_yaml(path)
    path.write_text(yaml.safe_dump({"name": "mine", "folder": "mine", "pattern": "{subject}/{session}/{label}.csv",
                                    "reader": {"kind": "delimited"}, "units": "uV", "electrodes": RING4,
                                    "labels": {0: "Rest"}}))
    with pytest.raises(ManifestError, match=rf"^{path}: missing required field\(s\) \['fs'\]"):
        DatasetManifest.from_yaml(path)
    with pytest.raises(ManifestError, match="manifest file not found"):
        DatasetManifest.from_yaml(tmp_path / "absent.yaml")


# --- shipped manifests and source resolution -------------------------------------------------


def test_shipped_manifests_are_valid() -> None:
    shipped = shipped_manifests()
    assert set(shipped) == {"3dc", "coteallard", "francic", "myodisco", "ciil", "multiday"}
    for name, path in shipped.items():
        m = DatasetManifest.from_yaml(path)
        assert m.name == name == m.folder and m.rest_label in m.labels


def test_resolve_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in ("3dc", "multiday", "unrelated"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    found = resolve_source(str(tmp_path / "data"))
    assert sorted(m.name for m, _ in found) == ["3dc", "multiday"] and {r for _, r in found} == {tmp_path / "data"}
    [(m, root)] = resolve_source(str(tmp_path / "data" / "multiday"))  # one dataset's own folder
    assert m.name == "multiday" and root == (tmp_path / "data").resolve()

    monkeypatch.setenv("AEMG_DATA", str(tmp_path / "data"))
    [(m, root)] = resolve_source("3dc")
    assert m.name == "3dc" and root == tmp_path / "data"
    assert resolve_source("3dc", data_root=tmp_path)[0][1] == tmp_path

    yaml_path = tmp_path / "data" / "mine.yaml"  # a user's manifest next to its dataset folder
    spec = {"name": "mine", "folder": "unrelated", "pattern": "{subject}/{session}/{label}.csv", "fs": 500,
            "reader": {"kind": "delimited"}, "units": "uV", "electrodes": RING4, "labels": {0: "Rest"}}
    yaml_path.write_text(yaml.safe_dump(spec))
    [(m, root)] = resolve_source(str(yaml_path))
    assert m.name == "mine" and root == (tmp_path / "data").resolve()

    with pytest.raises(DataError, match="holds none of the shipped datasets' folders"):
        resolve_source(str(tmp_path / "data" / "unrelated"))
    with pytest.raises(DataError, match="not a shipped dataset"):
        resolve_source("no-such-dataset")
