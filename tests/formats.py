"""Writers of small source files in the common EMG formats, laid out as their producers lay them out.

Shared by the reader tests and the reader fuzz tests: each writes one recording of `emg` (samples x
channels) in its format and returns the path the manifest pattern points at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ninapro_mat(path: Path, emg: np.ndarray, restimulus: np.ndarray, rerepetition: np.ndarray) -> Path:
    """A NinaPro-style MATLAB v5 file: emg (N x C), restimulus and rerepetition (N x 1), plus the raw stimulus."""
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"emg": emg.astype(np.float64), "restimulus": restimulus[:, None].astype(np.float64),
                            "rerepetition": rerepetition[:, None].astype(np.float64),
                            "stimulus": restimulus[:, None].astype(np.float64), "subject": 1.0, "exercise": 1.0})
    return path


def mat73(path: Path, variables: dict[str, object]) -> Path:
    """A MATLAB v7.3 file: HDF5 with MATLAB's 512-byte header block, arrays stored column-major (so h5py sees them
    transposed) and structs as groups, as MATLAB's save -v7.3 writes them."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        def put(group, name, value):
            if isinstance(value, dict):
                sub = group.create_group(name)
                sub.attrs["MATLAB_class"] = np.bytes_("struct")
                for key, inner in value.items():
                    put(sub, key, inner)
            else:
                data = np.atleast_2d(np.asarray(value, dtype=np.float64))
                group.create_dataset(name, data=data.T).attrs["MATLAB_class"] = np.bytes_("double")
        for name, value in variables.items():
            put(f, name, value)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with path.open("r+b") as f:
        f.write(header.ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM" + b"\0" * (512 - 128))
    return path


def hdf5_file(path: Path, emg: np.ndarray, fs: float, labels: np.ndarray | None = None) -> Path:
    """An HDF5 recording: /emg/data (N x C), /emg/time in seconds, optional /labels."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("emg/data", data=emg.astype(np.float32))
        f.create_dataset("emg/time", data=1000.0 + np.arange(emg.shape[0]) / fs)
        if labels is not None:
            f.create_dataset("labels", data=labels.astype(np.int32))
    return path


def wfdb_record(folder: Path, name: str, emg: np.ndarray, fs: float, names: list[str]) -> Path:
    """A WFDB record (GRABMyo's format) written by the `wfdb` package: NAME.hea + NAME.dat (format 16)."""
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * emg.shape[1], sig_name=names, p_signal=emg.astype(np.float64),
                fmt=["16"] * emg.shape[1], write_dir=str(folder))
    return folder / f"{name}.hea"


def edf_file(path: Path, emg: np.ndarray, fs: float, names: list[str], slow: bool = True) -> Path:
    """An EDF (or BDF, by extension) file written by edfio, with a slower accelerometer signal beside the EMG."""
    import edfio

    path.parent.mkdir(parents=True, exist_ok=True)
    bdf = path.suffix == ".bdf"
    signal = edfio.BdfSignal if bdf else edfio.EdfSignal
    limit = float(np.abs(emg).max()) * 1.01 + 1e-3
    signals = [signal(emg[:, i].astype(np.float64), sampling_frequency=fs, label=name,
                      physical_range=(-limit, limit)) for i, name in enumerate(names)]
    if slow:
        seconds = emg.shape[0] / fs
        signals.append(signal(np.zeros(int(round(seconds * 10))), sampling_frequency=10, label="ACC",
                              physical_range=(-1, 1)))
    (edfio.Bdf if bdf else edfio.Edf)(signals).write(path)
    return path
