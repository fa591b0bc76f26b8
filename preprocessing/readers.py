"""Reader kinds: how one source file becomes a float32 (n_samples, n_channels) array.

A dataset manifest names a reader kind and its options under `reader:`; `make_reader`
turns that mapping into one of the frozen (picklable) reader objects below.

    kind: delimited      text, one row per sample, one column per channel
        delimiter: ","   a single character; omit (or null) for any run of whitespace
        skip_header: 0   rows to skip at the top of every file
    kind: binary         raw samples, channels interleaved (sample 0 ch 0, sample 0 ch 1, ...)
        dtype: int16     any numpy integer or float type
        byteorder: little
    kind: label_column   delimited text whose last column is a per-sample integer label
        delimiter, skip_header as for `delimited`
    kind: mat            MATLAB .mat, v5 (scipy.io, after preprocessing/mat5.py checks its elements) or
                         v7.3 (HDF5, via h5py), told apart by the file
        emg: emg         the EMG variable; `a.b` is field b of struct a
        orientation: samples_channels   or channels_samples (one row per channel)
        labels: null     a per-sample label variable (e.g. NinaPro's restimulus)
        repetitions: null   a per-sample repetition variable beside it (e.g. rerepetition)
    kind: hdf5           HDF5 datasets by path; a field of a compound dataset is one more path step
        emg, orientation, labels, repetitions as for `mat` (paths such as /data/emg)
        timestamps: null   a per-sample time dataset: the sampling rate is taken from it
        time_unit_s: 1.0   seconds per timestamp unit (0.001 for milliseconds)
    kind: numpy          .npy (the array is the EMG) or .npz (arrays by name), never unpickled
        emg, orientation, labels, repetitions as for `mat` (array names of an .npz)
    kind: wfdb           a WFDB record (.hea header + its signal files), via the `wfdb` package;
                         the sampling rate and channel names come from the header
        physical: true   physical units (the header's gain and baseline); false: ADC values
    kind: edf            EDF/EDF+ or BDF/BDF+ (by the .bdf extension), via `edfio`; the rate and
                         channel names come from the header. Signals slower than the fastest one
                         (accelerometers, annotations) are left out: EMG is the fastest signal

Every reader checks what it can see in one file and raises DataError naming the file:
an empty file, a binary size that is not a whole number of samples, text rows with the
wrong number of columns or non-numeric fields, a channel count other than the electrode
layout's, and a file with no finite value at all. Single NaN/Inf samples are kept: the
harmonizer flags and repairs them per channel.

The array and container readers (mat, hdf5, numpy, wfdb, edf) also reject a missing
variable, an EMG of the wrong orientation (the message says the shape it found), a label or
repetition vector whose length differs from the EMG's, non-numeric data and shapes beyond
MAX_ELEMENTS; whatever a library raises on a truncated or corrupt file becomes a DataError
naming the file, so a reader either returns the whole recording or raises DataError.

`n_channels` None means "whatever the file holds" (a manifest's `channels` map then picks the
layout's channels from the columns, see channel_map.py); raw binary needs the count.

A new source format is one more reader class with a `read` method, registered in READERS.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Protocol

import numpy as np

from .errors import DataError, ManifestError


@dataclass(frozen=True)
class FileData:
    """What one file holds: EMG (n_samples, n_channels) float32 and, for label-column
    readers, the per-sample labels (n_samples,) int64."""

    emg: np.ndarray
    labels: np.ndarray | None = None
    reps: np.ndarray | None = None  # (n_samples,) int64 repetition index beside `labels` (NinaPro's rerepetition)
    fs: float | None = None  # the rate the file itself declares (WFDB and EDF headers, HDF5 timestamps)
    channel_names: tuple[str, ...] | None = None  # names the file gives its columns, for a `channels` map by name


class Reader(Protocol):
    provides_labels: ClassVar[bool]
    provides_fs: ClassVar[bool]  # the file declares its sampling rate (the manifest's `fs` may be left out)

    def read(self, path: Path, n_channels: int | None) -> FileData: ...


@dataclass(frozen=True)
class DelimitedReader:
    """Delimited text, one row per sample."""

    delimiter: str | None = None
    skip_header: int = 0

    provides_labels: ClassVar[bool] = False
    provides_fs: ClassVar[bool] = False
    extra_columns: ClassVar[int] = 0  # trailing non-EMG columns (the label column)

    def __post_init__(self) -> None:
        if self.delimiter is not None and (not isinstance(self.delimiter, str) or len(self.delimiter) != 1):
            raise ManifestError(f"reader.delimiter must be one character or null (whitespace), got {self.delimiter!r}")
        if not isinstance(self.skip_header, int) or isinstance(self.skip_header, bool) or self.skip_header < 0:
            raise ManifestError(f"reader.skip_header must be a non-negative integer, got {self.skip_header!r}")

    def _table(self, path: Path, n_channels: int | None) -> np.ndarray:
        # np.loadtxt (C parser since numpy 1.23) measured fastest here: ~19 MB/s against
        # ~16 MB/s for np.fromstring on the whole text and ~9 MB/s for a Python split loop,
        # and it rejects ragged rows and non-numeric fields itself.
        # comments=None so that a stray header or comment line is an error, not skipped.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data": checked below
                table = np.loadtxt(path, delimiter=self.delimiter, skiprows=self.skip_header,
                                   dtype=np.float32, ndmin=2, comments=None)
        except UnicodeDecodeError:  # a ValueError too, so caught first
            raise DataError(path, "not a text file (cannot be decoded)") from None
        except ValueError as err:
            raise DataError(path, f"malformed text ({self._bad_line(path) or str(err).split(';')[0]})") from None
        if table.shape[0] == 0:
            raise DataError(path, "empty file (no samples)")
        expected = table.shape[1] if n_channels is None else n_channels + self.extra_columns
        if table.shape[1] != expected or table.shape[1] <= self.extra_columns:
            what = ("at least one channel" if n_channels is None else f"{n_channels} channels") \
                + (" + a label column" if self.extra_columns else "")
            raise DataError(path, f"{table.shape[1]} columns, but the electrode layout needs {what}")
        return table

    def _bad_line(self, path: Path) -> str:
        """Where the text first breaks, by the file's own line number: np.loadtxt counts data rows (from 0 or
        1, depending on the error), after the header and without blank lines, which is no line a user can find.
        Only run once loadtxt has failed, so the fast path stays numpy's."""
        width = None
        with path.open(errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if number <= self.skip_header or not line.strip():
                    continue
                fields = line.split(self.delimiter) if self.delimiter else line.split()
                width = width or len(fields)
                if len(fields) != width:
                    return f"line {number} has {len(fields)} columns, the first data line {width}"
                for column, text in enumerate(fields, start=1):
                    try:
                        float(text)
                    except ValueError:
                        return f"line {number}, column {column}: {text.strip()[:40]!r} is not a number"
        return ""

    def read(self, path: Path, n_channels: int | None) -> FileData:
        return FileData(_checked_emg(path, self._table(path, n_channels)))


@dataclass(frozen=True)
class LabelColumnReader(DelimitedReader):
    """Delimited text whose last column is the label of each sample."""

    provides_labels: ClassVar[bool] = True
    extra_columns: ClassVar[int] = 1

    def read(self, path: Path, n_channels: int | None) -> FileData:
        table = self._table(path, n_channels)
        labels = table[:, -1]
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if bad.size:
            raise DataError(path, f"label column holds a non-integer value {float(labels[bad[0]]):g} at sample {bad[0]}")
        return FileData(_checked_emg(path, np.ascontiguousarray(table[:, :-1])), labels.astype(np.int64))


@dataclass(frozen=True)
class BinaryReader:
    """Raw samples with the channels interleaved, no header."""

    dtype: str = "int16"
    byteorder: str = "little"

    provides_labels: ClassVar[bool] = False
    provides_fs: ClassVar[bool] = False

    def __post_init__(self) -> None:
        try:
            kind = np.dtype(self.dtype).kind
        except TypeError:
            kind = None
        if kind not in ("i", "u", "f"):
            raise ManifestError(f"reader.dtype must be a numpy integer or float type, got {self.dtype!r}")
        if self.byteorder not in ("little", "big"):
            raise ManifestError(f"reader.byteorder must be 'little' or 'big', got {self.byteorder!r}")

    def read(self, path: Path, n_channels: int | None) -> FileData:
        dtype = np.dtype(self.dtype).newbyteorder("<" if self.byteorder == "little" else ">")
        if n_channels is None:
            raise DataError(path, "raw binary does not say how many channels it interleaves: give the manifest's "
                                  "`file_channels`")
        size = path.stat().st_size
        frame = n_channels * dtype.itemsize
        if size == 0:
            raise DataError(path, "empty file (no samples)")
        if size % frame:
            raise DataError(path, f"truncated or corrupt: {size} bytes is not a whole number of samples "
                                  f"({n_channels} channels x {dtype.itemsize} bytes)")
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, repaired as a missing sample
            emg = np.fromfile(path, dtype=dtype).reshape(-1, n_channels).astype(np.float32)
        return FileData(_checked_emg(path, emg))


MAX_ELEMENTS = 1 << 31  # values one array may hold (8 GB as float32): a corrupt header's absurd shape stops here
ORIENTATIONS = ("samples_channels", "channels_samples")


@contextmanager
def library_errors(path: Path, what: str) -> Iterator[None]:
    """Whatever a third-party parser raises on a truncated, corrupt or foreign file, as DataError naming it.

    Parsers of binary formats (scipy.io, h5py, wfdb, edfio) fail in many ways on bad bytes (ValueError,
    KeyError, OSError, struct.error, TypeError, IndexError, MemoryError for an absurd declared size, ...),
    none of which a caller can act on differently; DataError passes through unchanged.
    """
    try:
        yield
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - a library's failure on bad input is the file's problem
        detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise DataError(path, f"not a readable {what} file ({detail})") from None


@dataclass(frozen=True)
class _ArrayReader:
    """A container of named arrays (MATLAB, HDF5, NumPy): the EMG matrix and optional per-sample label and
    repetition vectors, picked by name. Subclasses only open the file and look names up (`_arrays`)."""

    emg: str = "emg"
    orientation: str = "samples_channels"
    labels: str | None = None
    repetitions: str | None = None

    provides_fs: ClassVar[bool] = False
    what: ClassVar[str] = ""  # the format's name in error messages

    def __post_init__(self) -> None:
        for name in ("emg", "labels", "repetitions"):
            value = getattr(self, name)
            if not (isinstance(value, str) and value.strip()) and not (value is None and name != "emg"):
                raise ManifestError(f"reader.{name} must be a variable name, got {value!r}")
        if self.orientation not in ORIENTATIONS:
            raise ManifestError(f"reader.orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if self.repetitions is not None and self.labels is None:
            raise ManifestError("reader.repetitions needs reader.labels (a repetition vector numbers label runs)")

    @property
    def provides_labels(self) -> bool:  # type: ignore[override]
        return self.labels is not None

    def _arrays(self, path: Path) -> Any:
        """A context manager yielding `get(name) -> np.ndarray` (DataError naming the file when it is missing)."""
        raise NotImplementedError

    def read(self, path: Path, n_channels: int | None) -> FileData:
        with library_errors(path, self.what), self._arrays(path) as get:
            emg = oriented_emg(path, get(self.emg), self.emg, self.orientation, n_channels)
            labels = self._vector(path, get, self.labels, emg.shape[0])
            reps = self._vector(path, get, self.repetitions, emg.shape[0])
            fs = self._rate(path, get, emg.shape[0])
        return FileData(_checked_emg(path, emg), labels, reps, fs)

    def _vector(self, path: Path, get: Any, name: str | None, n_samples: int) -> np.ndarray | None:
        return None if name is None else integer_vector(path, get(name), name, n_samples)

    def _rate(self, path: Path, get: Any, n_samples: int) -> float | None:
        return None


@dataclass(frozen=True)
class MatReader(_ArrayReader):
    """MATLAB .mat: v5 files through scipy.io, v7.3 files (HDF5 inside) through h5py."""

    what: ClassVar[str] = "MATLAB"

    @contextmanager
    def _arrays(self, path: Path) -> Iterator[Any]:
        import h5py

        if h5py.is_hdf5(path):  # v7.3; MATLAB stores arrays column-major, so h5py sees them transposed
            with h5py.File(path, "r") as f:
                yield lambda name: _h5_array(f, name.replace(".", "/"), path, self.what).T
            return
        import scipy.io

        from .mat5 import checked_variables

        tops = {n.split(".")[0] for n in (self.emg, self.labels, self.repetitions) if n}
        # scipy's C reader segfaults on some damaged v5 files: it reads the wanted variables once they are checked
        variables = scipy.io.loadmat(checked_variables(path, tops), variable_names=sorted(tops), simplify_cells=True)

        def get(name: str) -> np.ndarray:
            value: Any = variables
            for part in name.split("."):
                if not isinstance(value, Mapping) or part not in value:
                    raise DataError(path, f"has no MATLAB variable {name!r}"
                                          f"{'' if value is variables else ' (no field ' + repr(part) + ')'}")
                value = value[part]
            return _numeric(path, value, name)
        yield get


@dataclass(frozen=True)
class HDF5Reader(_ArrayReader):
    """HDF5 datasets by path, optionally with a timestamp dataset that gives the sampling rate."""

    timestamps: str | None = None
    time_unit_s: float = 1.0

    what: ClassVar[str] = "HDF5"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timestamps is not None and not (isinstance(self.timestamps, str) and self.timestamps.strip()):
            raise ManifestError(f"reader.timestamps must be a dataset path, got {self.timestamps!r}")
        if isinstance(self.time_unit_s, bool) or not isinstance(self.time_unit_s, (int, float)) \
                or not self.time_unit_s > 0:
            raise ManifestError(f"reader.time_unit_s must be a positive number of seconds, got {self.time_unit_s!r}")

    @property
    def provides_fs(self) -> bool:  # type: ignore[override]
        return self.timestamps is not None

    @contextmanager
    def _arrays(self, path: Path) -> Iterator[Any]:
        import h5py

        with h5py.File(path, "r") as f:
            yield lambda name: _h5_array(f, name, path, self.what)

    def _rate(self, path: Path, get: Any, n_samples: int) -> float | None:
        if self.timestamps is None:
            return None
        t = np.asarray(get(self.timestamps), dtype=np.float64).reshape(-1) * self.time_unit_s
        if t.size != n_samples:
            raise DataError(path, f"timestamps {self.timestamps!r} hold {t.size} values but the EMG has {n_samples} samples")
        step = np.diff(t)
        if t.size < 2 or not np.all(np.isfinite(t)) or not np.all(step > 0):
            raise DataError(path, f"timestamps {self.timestamps!r} are not finite and strictly increasing")
        median = float(np.median(step))
        if np.max(np.abs(step - median)) > 0.5 * median:  # a gap or a jump: the samples are not evenly spaced
            raise DataError(path, f"timestamps {self.timestamps!r} are not evenly spaced (steps from {step.min():g} "
                                  f"to {step.max():g} s): resample the source or split it at the gaps")
        return 1.0 / median


@dataclass(frozen=True)
class NumpyReader(_ArrayReader):
    """NumPy .npy (one array: the EMG) or .npz (arrays by name); object arrays are refused, never unpickled."""

    what: ClassVar[str] = "NumPy"

    @contextmanager
    def _arrays(self, path: Path) -> Iterator[Any]:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            _check_npy_size(path, loaded)
            def get(name: str) -> np.ndarray:
                if name != self.emg:
                    raise DataError(path, f"a .npy file holds one array (the EMG); {name!r} needs an .npz")
                return _numeric(path, loaded, name)
            yield get
            return
        with loaded:
            def get_npz(name: str) -> np.ndarray:
                if name not in loaded.files:
                    raise DataError(path, f"has no array {name!r} (it holds {sorted(loaded.files)[:10]})")
                return _numeric(path, loaded[name], name)
            yield get_npz


@dataclass(frozen=True)
class WFDBReader:
    """A WFDB record: the `.hea` header names the signal files, the rate and the channels."""

    physical: bool = True

    provides_labels: ClassVar[bool] = False
    provides_fs: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.physical, bool):
            raise ManifestError(f"reader.physical must be true or false, got {self.physical!r}")

    def read(self, path: Path, n_channels: int | None) -> FileData:
        import wfdb

        if path.suffix != ".hea":
            raise DataError(path, "a WFDB record is read from its .hea header (make the pattern end in .hea)")
        with library_errors(path, "WFDB"):
            if not path.read_bytes().endswith(b"\n"):  # every header line ends in one: a cut line still parses
                raise DataError(path, "header does not end with a line break (truncated?)")
            header = wfdb.rdheader(str(path.with_suffix("")))
            declared = int(header.sig_len or 0) * int(header.n_sig or 0)
            if declared > MAX_ELEMENTS:
                raise DataError(path, f"header declares {header.sig_len} samples x {header.n_sig} signals, "
                                      f"beyond {MAX_ELEMENTS} values")
            _check_wfdb_sizes(path, header)
            record = wfdb.rdrecord(str(path.with_suffix("")), physical=False)
            digital = record.d_signal
            if digital is None or digital.ndim != 2 or digital.shape != (header.sig_len, header.n_sig):
                raise DataError(path, f"signal files hold {None if digital is None else digital.shape}, "
                                      f"not the {header.sig_len} x {header.n_sig} the header declares")
            declared = [c for c in (record.checksum or []) if c is not None]
            if len(declared) == header.n_sig and list(record.calc_checksum()) != declared:
                raise DataError(path, "samples do not match the header's checksums (a corrupt signal file)")
            signal = record.dac(return_res=64) if self.physical else digital
            emg = oriented_emg(path, signal, "signals", "samples_channels", n_channels)
        return FileData(_checked_emg(path, emg), fs=_file_rate(path, record.fs),
                        channel_names=tuple(str(n) for n in record.sig_name))


@dataclass(frozen=True)
class EDFReader:
    """EDF/EDF+ or BDF/BDF+ (decided by the .bdf extension): the fastest signals, with their labels."""

    provides_labels: ClassVar[bool] = False
    provides_fs: ClassVar[bool] = True

    def read(self, path: Path, n_channels: int | None) -> FileData:
        import edfio

        bdf = path.suffix.lower() == ".bdf"
        what = "BDF" if bdf else "EDF"
        with library_errors(path, what), warnings.catch_warnings():
            # edfio warns and carries on when the header's record count disagrees with the file's size (a
            # truncated or padded file): that is a half-read recording, so it is an error here
            warnings.simplefilter("error", UserWarning)
            edf = edfio.read_bdf(path) if bdf else edfio.read_edf(path, lazy_load_data=False)
            signals = list(edf.signals)
            if not signals:
                raise DataError(path, f"{what} file holds no signal (only annotations)")
            fastest = max(s.sampling_frequency for s in signals)
            chosen = [s for s in signals if s.sampling_frequency == fastest]
            emg = oriented_emg(path, np.stack([np.asarray(s.data) for s in chosen], axis=1), "signals",
                               "samples_channels", n_channels)
        return FileData(_checked_emg(path, emg), fs=_file_rate(path, fastest),
                        channel_names=tuple(str(s.label).strip() for s in chosen))


def oriented_emg(path: Path, array: np.ndarray, name: str, orientation: str, n_channels: int | None) -> np.ndarray:
    """A numeric 2-D array (a vector is one channel) as float32 (n_samples, n_channels), checked against the
    channel count; a mismatch names the shape found, which is how a wrong orientation shows."""
    array = _numeric(path, array, name)
    if array.ndim == 1:
        array = array[:, None] if orientation == "samples_channels" else array[None, :]
    if array.ndim != 2:
        raise DataError(path, f"{name!r} has shape {array.shape}; EMG must be 2-D (samples x channels)")
    emg = array if orientation == "samples_channels" else array.T
    if emg.shape[0] == 0 or emg.shape[1] == 0:
        raise DataError(path, f"{name!r} is empty (shape {array.shape})")
    if n_channels is not None and emg.shape[1] != n_channels:
        raise DataError(path, f"{name!r} has shape {array.shape}: read as {orientation}, {emg.shape[1]} channels, but "
                              f"the electrode layout needs {n_channels} (is reader.orientation right?)")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: harmonization repairs it
        return np.ascontiguousarray(emg, dtype=np.float32)


def integer_vector(path: Path, array: np.ndarray, name: str, n_samples: int) -> np.ndarray:
    """A per-sample vector ((n,), (n, 1) or (1, n)) of integer values as int64, of the EMG's length."""
    array = _numeric(path, array, name)
    if array.ndim > 2 or (array.ndim == 2 and min(array.shape) != 1):
        raise DataError(path, f"{name!r} has shape {array.shape}; a per-sample vector must be 1-D")
    vector = array.reshape(-1)
    if vector.size != n_samples:
        raise DataError(path, f"{name!r} holds {vector.size} values but the EMG has {n_samples} samples")
    bad = np.flatnonzero(~np.isfinite(vector) | (vector != np.round(vector)))
    if bad.size:
        raise DataError(path, f"{name!r} holds a non-integer value {float(vector[bad[0]]):g} at sample {bad[0]}")
    return vector.astype(np.int64)


def _numeric(path: Path, value: Any, name: str) -> np.ndarray:
    """`value` as a real numeric array, refusing text, structs, cells, complex data and absurd sizes."""
    array = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if array.dtype.kind not in "biuf":
        raise DataError(path, f"{name!r} is not a numeric array (type {array.dtype})")
    if array.size > MAX_ELEMENTS:
        raise DataError(path, f"{name!r} has shape {array.shape}, beyond {MAX_ELEMENTS} values")
    return array


def _h5_array(f: Any, name: str, path: Path, what: str) -> np.ndarray:
    """The dataset at `name` in an open h5py file; a last step that names a field of a compound dataset
    (e.g. emg2qwerty's timeseries/emg_left) reads that field."""
    import h5py

    node: Any = f
    parts = [p for p in name.split("/") if p]
    for i, part in enumerate(parts):
        if isinstance(node, h5py.Group) and part in node:
            node = node[part]
        elif isinstance(node, h5py.Dataset) and node.dtype.names and part in node.dtype.names and i == len(parts) - 1:
            if node.size * len(node.dtype.names) > MAX_ELEMENTS:
                raise DataError(path, f"{what} dataset {'/'.join(parts[:i])!r} has shape {node.shape}, "
                                      f"beyond {MAX_ELEMENTS} values")
            return np.asarray(node.fields(part)[()])
        else:
            raise DataError(path, f"has no {what} dataset {name!r}")
    if not isinstance(node, h5py.Dataset):
        raise DataError(path, f"{what} path {name!r} is a group, not a dataset")
    if node.size > MAX_ELEMENTS:
        raise DataError(path, f"{what} dataset {name!r} has shape {node.shape}, beyond {MAX_ELEMENTS} values")
    return np.asarray(node[()])


# bits per sample of WFDB's uncompressed signal formats (FLAC-compressed 508/516/524 are checked by their decoder)
_WFDB_BITS = {"8": 8, "16": 16, "24": 24, "32": 32, "61": 16, "80": 8, "160": 16, "212": 12, "310": 32 / 3,
              "311": 32 / 3}


def _check_wfdb_sizes(path: Path, header: Any) -> None:
    """Each signal file must hold exactly the samples the header declares (wfdb reads fewer without a word)."""
    files: dict[str, float] = {}
    for name, fmt, spf, offset in zip(header.file_name, header.fmt, header.samps_per_frame, header.byte_offset):
        if fmt not in _WFDB_BITS:
            continue
        files[name] = files.get(name, float(offset or 0) * 8) + header.sig_len * (spf or 1) * _WFDB_BITS[fmt]
    for name, bits in files.items():
        dat = path.parent / name
        if not dat.is_file():
            raise DataError(path, f"signal file {name} of the record is missing")
        expected, size = int(np.ceil(bits / 8)), dat.stat().st_size
        if not expected <= size <= expected + 3:  # formats 212/310/311 pad their last group
            raise DataError(dat, f"holds {size} bytes but its header {path.name} declares {expected}")


def _check_npy_size(path: Path, array: np.ndarray) -> None:
    """An .npy file must end where its array does (np.load reads what the header declares and ignores the rest)."""
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        # the header np.load just parsed (version 3.0 differs from 2.0 only in its text encoding); moves past it
        (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
        data_start = f.tell()
    if path.stat().st_size != data_start + array.nbytes:
        raise DataError(path, f"holds {path.stat().st_size - data_start} data bytes but its header declares "
                              f"{array.shape} {array.dtype} ({array.nbytes} bytes)")


def _file_rate(path: Path, fs: Any) -> float:
    rate = float(fs) if isinstance(fs, (int, float, np.number)) else float("nan")
    if not (np.isfinite(rate) and rate > 0):
        raise DataError(path, f"the header's sampling rate {fs!r} is not a positive number")
    return rate


READERS: dict[str, type] = {
    "delimited": DelimitedReader,
    "binary": BinaryReader,
    "label_column": LabelColumnReader,
    "mat": MatReader,
    "hdf5": HDF5Reader,
    "numpy": NumpyReader,
    "wfdb": WFDBReader,
    "edf": EDFReader,
}


def make_reader(spec: Mapping[str, Any]) -> Reader:
    """Build the reader a manifest's `reader:` mapping describes (ManifestError if it is bad)."""
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ManifestError(f"reader must be a mapping with a 'kind' (one of {sorted(READERS)}), got {spec!r}")
    options = {k: v for k, v in spec.items() if k != "kind"}
    cls = READERS.get(spec["kind"])
    if cls is None:
        raise ManifestError(f"unknown reader kind {spec['kind']!r}; known: {sorted(READERS)}")
    try:
        return cls(**options)
    except TypeError:
        allowed = sorted(cls.__dataclass_fields__)
        raise ManifestError(f"reader kind {spec['kind']!r} takes options {allowed}, got {sorted(options)}") from None


def _checked_emg(path: Path, emg: np.ndarray) -> np.ndarray:
    """Reject a file without a single finite sample (isolated NaN/Inf are left to harmonization)."""
    if not np.isfinite(emg).any():
        raise DataError(path, "no finite value in the whole file")
    return emg
