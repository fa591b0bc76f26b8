"""Every reader kind fuzzed: truncated, corrupted and random files and absurd array shapes only ever raise
DataError (naming the file) or return the whole recording: never another exception, a crash, a hang, or
a recording cut short. Headerless formats (delimited text, raw binary) cannot tell a file cut at a row or
frame boundary from a shorter one; for them a result only has to be well formed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats import edf_file, hdf5_file, mat73, ninapro_mat, wfdb_record
from preprocessing.errors import DataError
from preprocessing.readers import FileData, Reader, make_reader

N, C = 64, 4
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])


@dataclass(frozen=True)
class Sample:
    """A valid file of one reader kind, and which of its files the fuzzer changes."""

    reader: Reader
    path: Path  # what the reader is given
    target: Path  # the file whose bytes are fuzzed (the .dat of a WFDB record, else `path`)
    self_describing: bool  # the format declares its own size, so a truncated file must fail


def _emg() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((N, C)).astype(np.float32)


def _labels() -> np.ndarray:
    return np.repeat([0, 1], N // 2)


WRITERS: dict[str, Callable[[Path], Sample]] = {
    "delimited": lambda d: Sample(make_reader({"kind": "delimited", "delimiter": ","}), p := d / "x.csv", p, False)
    if np.savetxt(d / "x.csv", _emg(), delimiter=",") is None else None,
    "label_column": lambda d: Sample(make_reader({"kind": "label_column", "delimiter": ","}), p := d / "x.csv", p,
                                     False)
    if np.savetxt(d / "x.csv", np.c_[_emg(), _labels()], delimiter=",") is None else None,
    "binary": lambda d: Sample(make_reader({"kind": "binary", "dtype": "int16"}), p := d / "x.bin", p, False)
    if (_emg() * 1000).astype("<i2").tofile(d / "x.bin") is None else None,
    "mat": lambda d: Sample(make_reader({"kind": "mat", "labels": "restimulus", "repetitions": "rerepetition"}),
                            p := ninapro_mat(d / "x.mat", _emg(), _labels(), _labels()), p, True),
    "mat73": lambda d: Sample(make_reader({"kind": "mat", "emg": "s.emg", "labels": "s.y"}),
                              p := mat73(d / "x.mat", {"s": {"emg": _emg(), "y": _labels()}}), p, True),
    "hdf5": lambda d: Sample(make_reader({"kind": "hdf5", "emg": "emg/data", "timestamps": "emg/time",
                                          "labels": "labels"}), p := hdf5_file(d / "x.h5", _emg(), 500.0, _labels()),
                             p, True),
    "npy": lambda d: Sample(make_reader({"kind": "numpy"}), p := d / "x.npy", p, True)
    if np.save(d / "x.npy", _emg()) is None else None,
    "npz": lambda d: Sample(make_reader({"kind": "numpy", "labels": "y"}), p := d / "x.npz", p, True)
    if np.savez(d / "x.npz", emg=_emg(), y=_labels()) is None else None,
    "wfdb_header": lambda d: Sample(make_reader({"kind": "wfdb"}), p := wfdb_record(d, "x", _emg(), 500.0, list("abcd")),
                                    p, True),
    "wfdb_signal": lambda d: Sample(make_reader({"kind": "wfdb"}), p := wfdb_record(d, "x", _emg(), 500.0, list("abcd")),
                                    p.with_suffix(".dat"), True),
    "edf": lambda d: Sample(make_reader({"kind": "edf"}), p := edf_file(d / "x.edf", _emg(), 64.0, list("abcd")), p,
                            True),
    "bdf": lambda d: Sample(make_reader({"kind": "edf"}), p := edf_file(d / "x.bdf", _emg(), 64.0, list("abcd")), p,
                            True),
}


@pytest.fixture(scope="module", params=sorted(WRITERS))
def sample(request, tmp_path_factory) -> tuple[Sample, bytes, FileData]:
    folder = tmp_path_factory.mktemp(request.param)
    made = WRITERS[request.param](folder)
    original = made.target.read_bytes()
    return made, original, made.reader.read(made.path, C)


def _check(made: Sample, original: FileData, cut_short: bool) -> None:
    """Reading the fuzzed file raises DataError naming it, or gives a whole, well-formed recording."""
    try:
        data = made.reader.read(made.path, C)
    except DataError as err:
        assert Path(err.where).parent == made.path.parent and Path(err.where).stem == made.path.stem, err
        return
    assert data.emg.dtype == np.float32 and data.emg.ndim == 2 and data.emg.shape[1] == C and data.emg.shape[0] > 0
    for vector in (data.labels, data.reps):
        assert vector is None or (vector.dtype == np.int64 and vector.shape == (data.emg.shape[0],))
    if made.self_describing:  # no half-read recording: the shape the file declared, or an error
        assert data.emg.shape == original.emg.shape
        if cut_short:
            np.testing.assert_array_equal(data.emg, original.emg)


@FUZZ
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated(sample, fraction: float) -> None:
    made, original, clean = sample
    try:
        made.target.write_bytes(original[:int(fraction * len(original))])
        _check(made, clean, cut_short=True)
    finally:
        made.target.write_bytes(original)


@FUZZ
@given(data=st.data())
def test_corrupted(sample, data) -> None:
    made, original, clean = sample
    n = data.draw(st.integers(1, 8))
    positions = data.draw(st.lists(st.integers(0, len(original) - 1), min_size=n, max_size=n))
    values = data.draw(st.binary(min_size=n, max_size=n))
    corrupted = bytearray(original)
    for position, value in zip(positions, values):
        corrupted[position] = value
    try:
        made.target.write_bytes(bytes(corrupted))
        _check(made, clean, cut_short=False)
    finally:
        made.target.write_bytes(original)


@FUZZ
@given(content=st.binary(max_size=2048))
def test_random_bytes(sample, content: bytes) -> None:
    made, original, clean = sample
    try:
        made.target.write_bytes(content)
        _check(made, clean, cut_short=False)
    except AssertionError:
        if made.self_describing:  # random bytes that parse are a file of another shape: it must not be read
            raise
    finally:
        made.target.write_bytes(original)


SHAPES = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, labels=SHAPES, kind=st.sampled_from(["mat", "mat73", "hdf5", "npz"]))
def test_absurd_shapes(tmp_path_factory, shape: tuple, labels: tuple, kind: str) -> None:
    """EMG and label arrays of any shape: a well-formed result only when the shapes make sense."""
    import h5py
    import scipy.io

    folder = tmp_path_factory.mktemp("shapes")
    emg, y = np.ones(shape), np.zeros(labels)
    spec = {"kind": "numpy" if kind == "npz" else "hdf5" if kind == "hdf5" else "mat", "labels": "y"}
    path = folder / {"mat": "x.mat", "mat73": "x.mat", "hdf5": "x.h5", "npz": "x.npz"}[kind]
    if kind == "mat":
        scipy.io.savemat(path, {"emg": emg, "y": y})
    elif kind == "mat73":
        mat73(path, {"emg": emg.T if emg.ndim == 2 else emg, "y": y})
    elif kind == "hdf5":
        with h5py.File(path, "w") as f:
            f["emg"], f["y"] = emg, y
    else:
        np.savez(path, emg=emg, y=y)
    try:
        data = make_reader(spec).read(path, None)
    except DataError as err:
        assert err.where == str(path)
        return
    assert data.emg.ndim == 2 and min(data.emg.shape) > 0 and data.labels.shape == (data.emg.shape[0],)


def test_mat_edits_that_crashed_scipys_reader_are_data_errors(tmp_path) -> None:
    """Two single-byte edits the fuzzer above found to segfault scipy.io's v5 reader (scipy 1.17): the complex flag
    set on a real array (it reads an imaginary part past the element) and a data-type code outside its table. The
    element walk of preprocessing/mat5.py refuses both before scipy reads the file."""
    path = ninapro_mat(tmp_path / "x.mat", _emg(), _labels(), _labels())
    original = path.read_bytes()
    assert original[144] == 6 and original[176] == 9  # emg, the first variable: mxDOUBLE flags, miDOUBLE data
    reader = make_reader({"kind": "mat", "labels": "restimulus", "repetitions": "rerepetition"})
    for offset, value, problem in ((145, original[145] | 0x08, "1 data parts, its flags say 2"),
                                   (176, 8, "unknown data type 8")):
        edited = bytearray(original)
        edited[offset] = value
        path.write_bytes(bytes(edited))
        with pytest.raises(DataError, match=f"damaged MAT v5 file: .*{problem}"):
            reader.read(path, C)
