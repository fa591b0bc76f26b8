"""The harmonized corpus: a Zarr v3 store, one group per recording, plus a manifest.

Layout of `CORPUS.zarr/`:

    zarr.json                      root group; attrs: format, harmonize config
    <dataset>/<subject>/<session>/ one group per recording; attrs: all metadata
        emg/                       float32 (time, channels), chunked by time, Blosc-zstd
    manifest.json                  every complete recording with its length, so Ray Data can
                                   shard the corpus without opening every group

Crash safety: a recording group is created with `complete: false`, its array is written, and
only then are its attributes written with `complete: true`. Readers and the manifest ignore
groups that are not complete; a re-run deletes them and writes them again. The manifest is
rebuilt from the groups and replaced atomically, so it never lists a half-written recording.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr
import zarr.codecs
import zarr.registry

from aemg_dist import storage

from .harmonize import BAD_FLAGS, HarmonizeConfig, HarmonizedRecording
from .errors import DataError, first_line
from .recording import RawRecording, Segment, validate_segments
from .streaming import harmonize_chunked

CORPUS_FORMAT = "aemg-corpus/1"
MANIFEST_FILE = "manifest.json"
CHUNK_SECONDS = 30.0
# HarmonizeConfig fields that change how a corpus is computed, not what it holds: a re-run may differ in them
RUN_ONLY_FIELDS = ("chunk_seconds",)


class CorpusError(RuntimeError):
    """The corpus store is missing, of another format, or was made with other settings."""


@dataclass(frozen=True)
class RecordingEntry:
    """One manifest row."""

    key: str
    dataset: str
    subject: str
    session: str
    n_samples: int
    n_channels: int
    fs: float
    source_fs: float
    n_segments: int

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


def _compressor() -> zarr.codecs.BloscCodec:
    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


_BLOSC_HEADER = 16  # version, versionlz, flags, typesize, then uint32 LE: nbytes, blocksize, cbytes (the chunk's size)


class CheckedBloscCodec(zarr.codecs.BloscCodec):
    """Blosc that refuses a chunk whose length differs from the compressed size its header states, before c-blosc
    reads it: c-blosc trusts the header, so a truncated chunk file made it read past the buffer (a segfault in
    `aemg corpus check`, not an error naming the recording). Selected for every zarr read of this process below."""

    def _decode_sync(self, chunk_bytes, chunk_spec):  # zarr's signature (Buffer, ArraySpec) -> Buffer
        data = chunk_bytes.as_numpy_array()
        stated = int(data[12:_BLOSC_HEADER].view("<u4")[0]) if data.size >= _BLOSC_HEADER else None
        if stated != data.size:
            raise ValueError(f"damaged Blosc chunk: {data.size} bytes, its header states "
                             f"{'no size' if stated is None else stated}")
        return super()._decode_sync(chunk_bytes, chunk_spec)


zarr.registry.register_codec("blosc", CheckedBloscCodec)
zarr.config.set({"codecs.blosc": f"{CheckedBloscCodec.__module__}.{CheckedBloscCodec.__qualname__}"})


class CorpusWriter:
    """Writes harmonized recordings into a corpus; safe to run again on the same path."""

    def __init__(self, path: str | Path, config: HarmonizeConfig):
        self.path = storage.absolute(path)  # a local folder or a URI (s3://bucket/corpus.zarr)
        self.config = config
        check_corpus_output(self.path, config)
        root = zarr.open_group(store=storage.zarr_store(self.path, read_only=False), mode="a")
        if root.attrs.get("harmonize") is None:
            root.attrs.update({"format": CORPUS_FORMAT, "harmonize": asdict(config)})
        self.root = root

    def is_complete(self, key: str) -> bool:
        return _group_is_complete(self.root, key)

    def ensure_parents(self, keys: list[str]) -> None:
        """Create dataset/subject groups up front, so parallel writers never race on them."""
        for parent in sorted({key.rsplit("/", 1)[0] for key in keys}):
            self.root.require_group(parent)

    def write(self, rec: HarmonizedRecording) -> None:
        """Write one recording harmonized in memory; an incomplete leftover of an earlier crash is replaced."""
        group, array = self._create(rec.key, rec.emg.shape, rec.fs)
        array[...] = rec.emg
        group.attrs.update({**rec.attrs(self.config), "complete": True})

    def write_raw(self, raw: RawRecording) -> HarmonizedRecording:
        """Harmonize one recording chunk by chunk straight into its array (streaming.harmonize_chunked), so memory
        does not grow with its length; the group says complete only once the samples are final."""
        group: list[zarr.Group] = []

        def allocate(n_samples: int, n_channels: int) -> zarr.Array:
            made, array = self._create(raw.key, (n_samples, n_channels), self.config.target_fs)
            group.append(made)
            return array

        try:
            rec = harmonize_chunked(raw, self.config, allocate)
        except BaseException:
            if group:  # a recording refused after its samples were written (e.g. no usable channel) leaves nothing
                del self.root[raw.key]
            raise
        group[0].attrs.update({**rec.attrs(self.config), "complete": True})
        return rec

    def _create(self, key: str, shape: tuple[int, int], fs: float) -> tuple[zarr.Group, zarr.Array]:
        """A new group marked incomplete with its empty emg array; an earlier leftover of `key` is replaced."""
        if key in self.root:
            del self.root[key]
        group = self.root.create_group(key, attributes={"complete": False})
        chunk_rows = max(1, int(CHUNK_SECONDS * fs))
        array = group.create_array("emg", shape=shape, chunks=(min(chunk_rows, shape[0]), shape[1]),
                                   dtype="float32", compressors=_compressor())
        return group, array

    def write_manifest(self) -> list[RecordingEntry]:
        """Rebuild the manifest from the complete groups and replace it atomically."""
        entries = [_entry(key, attrs) for key, attrs in _iter_complete(self.root)]
        payload = {"format": CORPUS_FORMAT, "recordings": [asdict(e) for e in entries]}
        storage.write_text(storage.join(self.path, MANIFEST_FILE), json.dumps(payload, indent=1))
        return entries


def check_corpus_output(path: str | Path, config: HarmonizeConfig) -> None:
    """Before anything is written to `path`: it must be new, an empty folder, or a corpus prepared with the same
    settings; CorpusError naming what differs otherwise (a re-run with other settings would mix recordings
    harmonized two ways)."""
    if not storage.exists(path):
        return
    root_file = storage.join(path, "zarr.json")
    if not storage.exists(root_file):
        if storage.listdir(path):
            raise CorpusError(f"{path} holds other files and is not a corpus (no zarr.json); choose a new --out")
        return
    stored = _root_attrs(root_file)
    if stored.get("format") != CORPUS_FORMAT or not isinstance(stored.get("harmonize"), dict):
        raise CorpusError(f"{root_file}: not a corpus of format {CORPUS_FORMAT} (format {stored.get('format')!r}); "
                          "choose a new --out")
    wanted = {k: v for k, v in asdict(config).items() if k not in RUN_ONLY_FIELDS}
    changed = {k: (stored["harmonize"].get(k), v) for k, v in wanted.items() if stored["harmonize"].get(k) != v}
    if changed:
        raise CorpusError(f"{path} was prepared with other settings {changed} (stored, requested); "
                          "write to a new --out or delete it")


def _root_attrs(root_file: str) -> dict[str, Any]:
    """The attributes of a corpus's root zarr.json (CorpusError when it is not a zarr group's metadata)."""
    try:
        attrs = json.loads(storage.read_text(root_file)).get("attributes", {})
    except (ValueError, AttributeError):
        raise CorpusError(f"{root_file}: not a zarr group's metadata (a damaged corpus?)") from None
    return attrs if isinstance(attrs, dict) else {}


class Corpus:
    """Read access used by every later stage: list, metadata, time ranges, segments."""

    def __init__(self, path: str | Path):
        # a local folder or a URI (s3://bucket/corpus.zarr): read through aemg_dist.storage
        self.path = path if storage.is_uri(path) else Path(path)
        storage.check_scheme(path)
        manifest = storage.join(path, MANIFEST_FILE)
        if not storage.exists(storage.join(path, "zarr.json")):
            raise CorpusError(f"{self.path} is not a corpus (no zarr.json); run `aemg prepare` first")
        if not storage.exists(manifest):
            raise CorpusError(f"{self.path} has no {MANIFEST_FILE}; re-run `aemg prepare` to finish it")
        try:
            payload = json.loads(storage.read_text(manifest))
            if payload.get("format") != CORPUS_FORMAT:
                raise CorpusError(f"{manifest}: unknown corpus format {payload.get('format')!r}")
            self.entries = [_manifest_row(row) for row in payload["recordings"]]
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
            raise CorpusError(f"{manifest}: not a corpus manifest ({first_line(err)}); re-run `aemg prepare` "
                              "to rebuild it") from None
        self._by_key = {e.key: e for e in self.entries}
        try:
            self.root = zarr.open_group(store=storage.zarr_store(path, read_only=True), mode="r")
        except (ValueError, KeyError, OSError) as err:
            raise CorpusError(f"{self.path}/zarr.json: cannot open the corpus ({first_line(err)})") from None

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def keys(self) -> list[str]:
        return [e.key for e in self.entries]

    def entry(self, key: str) -> RecordingEntry:
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"{key!r} is not a recording of {self.path}") from None

    def attrs(self, key: str) -> dict[str, Any]:
        self.entry(key)
        try:
            return dict(self.root[key].attrs)
        except (ValueError, KeyError, OSError) as err:
            raise CorpusError(f"{self.path}/{key}: cannot read the recording's metadata ({first_line(err)}); "
                              "`aemg corpus check` lists what is damaged") from None

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """EMG samples [start, stop) of a recording, float32 (time, channels)."""
        n = self.entry(key).n_samples
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise IndexError(f"{key}: range [{start}, {stop}) outside [0, {n})")
        try:
            return self.root[key]["emg"][start:stop]
        except Exception as err:  # noqa: BLE001 - zarr and its codecs raise many kinds on a damaged chunk
            raise CorpusError(f"{self.path}/{key}: cannot read samples [{start}, {stop}) ({first_line(err)}); "
                              "`aemg corpus check` lists what is damaged") from None

    def segments(self, key: str) -> list[Segment]:
        return [Segment(**s) for s in self.attrs(key)["segments"]]

    def harmonize_config(self) -> dict[str, Any]:
        return dict(self.root.attrs.get("harmonize", {}))


_CASTS = {"str": str, "int": int, "float": float}
# each field's name and type, once: every Ray task opens the corpus, and a corpus holds thousands of rows
_ENTRY_FIELDS = {f.name: _CASTS[str(f.type)] for f in fields(RecordingEntry)}
_ENTRY_NAMES = sorted(_ENTRY_FIELDS)


def _manifest_row(row: Any) -> RecordingEntry:
    """A manifest row with its fields and types checked (KeyError, TypeError or ValueError otherwise)."""
    if not isinstance(row, dict) or sorted(row) != _ENTRY_NAMES:
        raise KeyError(f"a row {'with keys ' + str(sorted(row)) if isinstance(row, dict) else repr(row)[:60]}, "
                       f"expected {list(_ENTRY_FIELDS)}")
    return RecordingEntry(**{name: cast(row[name]) for name, cast in _ENTRY_FIELDS.items()})


def _group_is_complete(root: zarr.Group, key: str) -> bool:
    try:
        group = root[key]
        return bool(group.attrs.get("complete")) and group["emg"].shape[0] == group.attrs.get("n_samples")
    except (KeyError, ValueError, json.JSONDecodeError, FileNotFoundError):
        return False


def _recording_keys(root: zarr.Group) -> Iterator[str]:
    """Every group at depth 3 (dataset/subject/session), complete or not."""
    with warnings.catch_warnings():  # manifest.json and prepare.yaml at the root are ours, not zarr's
        warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
        datasets = sorted(root.groups())
    for dataset, dgroup in datasets:
        for subject, sgroup in sorted(dgroup.groups()):
            for session, _ in sorted(sgroup.groups()):
                yield f"{dataset}/{subject}/{session}"


def _iter_complete(root: zarr.Group) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in _recording_keys(root):
        if _group_is_complete(root, key):
            yield key, dict(root[key].attrs)


def _entry(key: str, attrs: dict[str, Any]) -> RecordingEntry:
    return RecordingEntry(key=key, dataset=attrs["dataset"], subject=attrs["subject"], session=attrs["session"],
                          n_samples=int(attrs["n_samples"]), n_channels=int(attrs["n_channels"]), fs=float(attrs["fs"]),
                          source_fs=float(attrs["source_fs"]), n_segments=len(attrs["segments"]))


def check_corpus(path: str | Path) -> list[str]:
    """Every problem found in a corpus, as one line each; empty when the corpus is sound."""
    try:
        corpus = Corpus(path)
    except (CorpusError, json.JSONDecodeError) as err:
        return [str(err)]
    problems = []
    try:
        on_disk = set(_recording_keys(corpus.root))
    except (ValueError, KeyError, TypeError) as err:  # a group's zarr.json that is not zarr metadata
        problems.append(f"the recording groups cannot be listed ({first_line(err)}); damaged group metadata")
        on_disk = {key for key in corpus.keys() if _group_is_complete(corpus.root, key)}
    for key in sorted(on_disk - set(corpus.keys())):
        state = "incomplete (an interrupted write; re-run prepare)" if not _group_is_complete(corpus.root, key) \
            else "complete but missing from the manifest (re-run prepare)"
        problems.append(f"{key}: {state}")
    for entry in corpus.entries:
        try:
            problems.extend(f"{entry.key}: {p}" for p in _check_recording(corpus, entry, on_disk))
        except (CorpusError, KeyError, TypeError, ValueError) as err:  # samples or metadata not as prepare wrote them
            problems.append(f"{entry.key}: damaged ({first_line(err)})")
    return problems


def _check_recording(corpus: Corpus, entry: RecordingEntry, on_disk: set[str]) -> list[str]:
    if entry.key not in on_disk or not _group_is_complete(corpus.root, entry.key):
        return ["listed in the manifest but missing or incomplete on disk"]
    attrs = corpus.attrs(entry.key)
    problems = []
    emg = corpus.root[entry.key]["emg"]
    if emg.shape != (entry.n_samples, entry.n_channels):
        problems.append(f"array shape {emg.shape} != manifest ({entry.n_samples}, {entry.n_channels})")
    if len(attrs["electrodes"]["channels"]) != entry.n_channels:
        problems.append("electrode layout and channel count disagree")
    for name in ("center", "scale"):
        if len(attrs["normalization"][name]) != entry.n_channels:
            problems.append(f"normalization {name} has the wrong length")
    if not all(s > 0 for s in attrs["normalization"]["scale"]):
        problems.append("non-positive normalization scale")
    flagged_ok = [not any(flag in BAD_FLAGS for flag in flags) for flags in attrs["channel_quality"]]
    if attrs["channel_ok"] != flagged_ok:
        problems.append(f"channel_ok {attrs['channel_ok']} disagrees with the quality flags {attrs['channel_quality']}")
    if not any(attrs["channel_ok"]):
        problems.append("no usable channel")
    try:
        validate_segments([Segment(**s) for s in attrs["segments"]], entry.n_samples, entry.key)
    except DataError as err:
        problems.append(err.problem)
    band = attrs["valid_band_hz"]
    if not 0 < band[0] < band[1] <= attrs["fs"] / 2:
        problems.append(f"valid band {band} is not inside (0, fs/2]")
    step = max(1, int(CHUNK_SECONDS * entry.fs))
    for start in range(0, entry.n_samples, step):  # chunk by chunk: bounded memory on long recordings
        if not np.isfinite(corpus.read(entry.key, start, min(start + step, entry.n_samples))).all():
            problems.append(f"non-finite samples in [{start}, {min(start + step, entry.n_samples)})")
            break
    return problems


def corpus_summary(corpus: Corpus) -> list[dict[str, Any]]:
    """One row per dataset: subjects, sessions, recordings, hours, channels, rates, segments."""
    rows = []
    for dataset in sorted({e.dataset for e in corpus.entries}):
        entries = [e for e in corpus.entries if e.dataset == dataset]
        bad = sum(not ok for e in entries for ok in corpus.attrs(e.key).get("channel_ok", []))
        rows.append({
            "dataset": dataset,
            "subjects": len({e.subject for e in entries}),
            "sessions": len({(e.subject, e.session) for e in entries}),
            "recordings": len(entries),
            "hours": sum(e.duration_s for e in entries) / 3600,
            "channels": "/".join(str(c) for c in sorted({e.n_channels for e in entries})),
            "source_fs": "/".join(f"{f:g}" for f in sorted({e.source_fs for e in entries})),
            "segments": sum(e.n_segments for e in entries),
            "bad_channels": bad,
        })
    return rows
