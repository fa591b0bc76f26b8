"""`aemg predict`: a personal decoder + a recording -> a CSV of per-window labels and class probabilities.

Inputs:
    a corpus key          the corpus's harmonized samples (zero-phase filtered already), normalized with the
                          decoder's statistics: exactly what fine-tuning and evaluation read
    a manifest key        a recording read through a dataset manifest (any reader kind), raw
    a file + a reader     one file read by an inline reader spec (`{kind: mat, emg: emg}`), raw; the decoder's
                          device rate unless the file declares its own
    a stream              raw samples on standard input or a socket bound to 127.0.0.1: binary frames of the
                          decoder's channel count (any numpy dtype, channels interleaved) or text lines (one
                          sample per line, values separated by commas or spaces)

Raw inputs go through the causal path of stream.py by default, so a file gives the decisions its live
stream would; `zero_phase` processes a raw recording as harmonization does (what the decoder was
fine-tuned on) instead. One CSV row per decision: the window's end in seconds, the label id and name,
and one probability column per class (`p_<name>`).
"""

from __future__ import annotations

import csv
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import numpy as np

from aemg_dist.decoder import Decoder
from aemg_dist.stream import Decisions, StreamDecoder, causal_decisions, zero_phase_decisions, zero_phase_windows
from preprocessing.corpus import Corpus
from preprocessing.errors import DataError
from preprocessing.geometry import ElectrodeLayout
from preprocessing.harmonize import denormalize
from preprocessing.readers import make_reader
from preprocessing.recording import RawRecording

TEXT = "text"  # the stream dtype of text lines


def decisions_of_corpus_key(decoder: Decoder, corpus_path: str, key: str) -> Decisions:
    """A corpus recording (harmonized, zero phase) normalized with the decoder's statistics."""
    corpus = Corpus(corpus_path)
    if key not in corpus:
        raise DataError(corpus_path, f"has no recording {key!r} (see `aemg corpus info`)")
    attrs = corpus.attrs(key)
    norm = attrs["normalization"]
    _check_channels(decoder, int(attrs["n_channels"]), key)
    if float(attrs["fs"]) != decoder.config.fs:
        raise DataError(key, f"is at {attrs['fs']} Hz but the decoder reads {decoder.config.fs:g} Hz windows")
    filtered = denormalize(corpus.read(key), norm["center"], norm["scale"])
    return zero_phase_decisions(decoder, decoder.normalize(filtered), float(attrs["source_fs"]))


def decisions_of_recording(decoder: Decoder, raw: RawRecording, zero_phase: bool = False) -> Decisions:
    """A raw recording through the causal path (or, with zero_phase, harmonization's filters)."""
    _check_channels(decoder, raw.n_channels, raw.key)
    if zero_phase:
        return zero_phase_decisions(decoder, zero_phase_windows(decoder, raw), raw.fs)
    return causal_decisions(decoder, raw.emg, raw.fs)


def manifest_recording(manifest_path: str, key: str, data_root: str | None = None) -> RawRecording:
    """The recording `key` (dataset/subject/session) of a manifest's dataset, read raw."""
    from preprocessing.manifest import manifest_jobs, resolve_source

    (manifest, root), = resolve_source(manifest_path, data_root)
    jobs = {job.key: job for job in manifest_jobs(manifest, root)}
    if key not in jobs:
        raise DataError(manifest_path, f"has no recording {key!r} under {root} (it has {sorted(jobs)[:5]} ...)")
    return jobs[key].load()


def file_recording(decoder: Decoder, path: str, reader: Mapping[str, Any]) -> RawRecording:
    """One file read with an inline reader spec, as a raw recording of the decoder's device."""
    data = make_reader(reader).read(Path(path), decoder.config.n_channels)
    cfg = decoder.config
    return RawRecording(dataset="predict", subject="", session=Path(path).stem, fs=data.fs or cfg.source_fs,
                        emg=data.emg, units=cfg.units, layout=ElectrodeLayout.from_dict(cfg.electrodes),
                        notch_hz=tuple(cfg.notch_hz), source_files=[str(path)])


def header(decoder: Decoder) -> list[str]:
    return ["end_s", "label", "label_name", *(f"p_{name}" for name in decoder.config.class_names)]


def rows(decoder: Decoder, decisions: Decisions) -> Iterator[list[Any]]:
    ids, names = decoder.config.class_ids, decoder.config.class_names
    for end, p, k in zip(decisions.end_s, decisions.probabilities, decisions.labels):
        yield [f"{end:.4f}", ids[k], names[k], *(f"{v:.5f}" for v in p)]


def write_csv(out: IO[str], decoder: Decoder, decisions: Decisions) -> None:
    writer = csv.writer(out)
    writer.writerow(header(decoder))
    writer.writerows(rows(decoder, decisions))


def stream_to_csv(decoder: Decoder, source: IO[bytes], out: IO[str], dtype: str = "float32",
                  source_fs: float | None = None, chunk_s: float | None = None) -> int:
    """Decode a stream of raw samples until it ends, writing (and flushing) one row per decision; returns the
    number of decisions. Binary frames are cut at frame boundaries whatever the reads return."""
    stream = StreamDecoder(decoder, source_fs)
    writer = csv.writer(out)
    writer.writerow(header(decoder))
    out.flush()
    n_channels = decoder.config.n_channels
    chunk = max(1, int(round((chunk_s or decoder.config.hop_s) * stream.source_fs)))
    count = 0
    for samples in (_text_chunks(source, n_channels, chunk) if dtype == TEXT
                    else _binary_chunks(source, np.dtype(dtype), n_channels, chunk)):
        decisions = stream.feed(samples)
        writer.writerows(rows(decoder, decisions))
        out.flush()
        count += decisions.end_s.size
    return count


@contextmanager
def listening(port: int) -> Iterator[IO[bytes]]:
    """The byte stream of the first client of a socket bound to 127.0.0.1:port (never another address)."""
    with socket.create_server(("127.0.0.1", port)) as server:
        connection, _ = server.accept()
        with connection, connection.makefile("rb") as stream:
            yield stream


def _binary_chunks(source: IO[bytes], dtype: np.dtype, n_channels: int, chunk: int) -> Iterator[np.ndarray]:
    frame = dtype.itemsize * n_channels
    read = getattr(source, "read1", source.read)  # read1: what has arrived, without waiting for a full chunk
    leftover = b""
    while data := read(chunk * frame):
        data = leftover + data
        whole = len(data) // frame * frame
        leftover = data[whole:]
        if whole:
            yield np.frombuffer(data[:whole], dtype=dtype).reshape(-1, n_channels).astype(np.float64)
    if leftover:
        raise DataError("<stream>", f"ended inside a sample frame ({len(leftover)} of {frame} bytes)")


def _text_chunks(source: IO[bytes], n_channels: int, chunk: int) -> Iterator[np.ndarray]:
    batch: list[list[float]] = []
    for number, line in enumerate(source, start=1):
        fields = line.decode(errors="replace").replace(",", " ").split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DataError("<stream>", f"line {number}: {line[:60]!r} is not {n_channels} numbers") from None
        if len(values) != n_channels:
            raise DataError("<stream>", f"line {number} holds {len(values)} values, the decoder reads {n_channels}")
        batch.append(values)
        if len(batch) == chunk:
            yield np.asarray(batch)
            batch = []
    if batch:
        yield np.asarray(batch)


def _check_channels(decoder: Decoder, n_channels: int, where: str) -> None:
    if n_channels != decoder.config.n_channels:
        raise DataError(where, f"has {n_channels} channels but the decoder was fitted to a "
                               f"{decoder.config.n_channels}-channel device")
