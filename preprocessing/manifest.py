"""Datasets as manifests: one YAML file says where a dataset's files are and how to read them.

A user adds a dataset by writing a manifest; code is needed only for a new reader kind
(`readers.py`). The shipped manifests live in `configs/datasets/`. Example (3DC):

    name: 3dc
    folder: 3dc
    pattern: "{subject}/{session}/EMG/3dc_EMG_gesture_{rep}_{label}.txt"
    reader: {kind: delimited, delimiter: ","}
    fs: 1000
    units: ADC counts
    electrodes: electrodes.json
    labels: {0: Neutral, 1: Radial Deviation, 2: Wrist Flexion, ...}
    rest_label: 0

Fields (required ones first):

  name              dataset id in the corpus (letters, digits, `-`, `_`, `.`)
  folder            the dataset's folder under the data root, e.g. `3dc`
  pattern           path of a data file relative to `folder`, with named fields `{name}`;
                    a field matches one or more characters other than `/` (shortest match)
                    unless `field_regex` says otherwise. Special fields: `subject` and
                    `session` (the default id templates), `label` (the class of the whole
                    file) and `rep` (its repetition index); `label`, `rep` and every field a
                    `derived` expression reads must be integers.
  reader            `{kind: ..., options}`; kinds and options are listed in readers.py
                    (delimited, binary, label_column, mat, hdf5, numpy, wfdb, edf)
  fs                sampling rate in Hz (50 to 100,000); may be left out when the reader takes it
                    from the file (wfdb, edf, hdf5 with timestamps); when both are given they must
                    agree within 0.5 %, and the manifest's nominal rate is kept
  units             units of the stored values, e.g. "ADC counts", "uV"
  electrodes        file name of an electrodes.json in `folder`, or an inline dict of the
                    same form (see geometry.py); its channel count is the data's
  labels            class id -> name (for a NinaPro-style label vector: every id it holds)
  rest_label        id of the rest class (optional, null when the protocol has none)
  subject, session  id templates over the fields, e.g. `"{split}-{who}"` or a constant
                    `"day1"`; default `"{subject}"` and `"{session}"`. Ids keep letters,
                    digits, `-`, `_` and `.`; any other character becomes `_`.
  derived           new integer fields from small expressions over integer fields, using
                    only + - * // % and parentheses, e.g. `{label: "index % 7", rep: "index // 7"}`
  field_regex       per-field regular expression replacing the default `[^/]+?`
  group_by          fields whose values make one recording (default: the fields the subject
                    and session templates use). Files of one recording are concatenated in
                    the order rep, label, then file name (numbers compared numerically).
  label_names_from  name of a per-folder JSON file (e.g. `metadata.json`) mapping file
                    paths to `class_idx` and `class_name`; keys are matched by file name,
                    the class must agree with the file name's `label` (if any) and the name
                    with `labels`, so a manifest cannot silently mislabel a dataset
  adc_range         [low, high] converter limits of the stored values, for clipping flags
  notch_hz          mains lines the recordings carry, e.g. [60]: notched wherever they fall inside
                    the valid band. Declared, not detected, so the filter never depends on the data
                    (a held-out subject's test samples must not decide how its signal is filtered)
  channels          which columns of each file are the layout's channels, in its order: indices,
                    a "start:stop" range, names the file gives (wfdb, edf) or a map file (see
                    channel_map.py). Default: every column, which must be the layout's count
  file_channels     how many columns each file holds, when `channels` selects some of them
                    (needed by raw binary, checked for the others)
  events, cue       label sources beside the file name and the reader: an events table per data
                    file (BIDS events.tsv style) or a cue protocol's timing (see labels.py)
  device, license   free text carried into the corpus
  description       notes for people (provenance, quirks)
  exclude           glob patterns (fnmatch; `*` also crosses `/`) of files under `folder`
                    that are not data. A file with the pattern's extension that neither
                    matches the pattern nor is excluded is an error, never skipped silently.

One recording (RawRecording) per group: one Segment per file, or, for a reader with per-sample
labels, one per run of equal (label, repetition) (rep = the file's repetition value where it has a
repetition vector and the value is > 0; else how many runs of that label came before it in the
recording: NinaPro marks rest 0), or one per event / cue span; `joins` holds the first sample of every
file after the first.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import math
import os
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from aemg_dist.config import ConfigError, read_yaml, shipped_configs

from .channel_map import ChannelMap
from .errors import DataError, ManifestError
from .geometry import ElectrodeLayout
from .labels import CueProtocol, EventsTable, Span
from .readers import BinaryReader, Reader, make_reader
from .recording import RawRecording, Segment, validate_segments

DATA_ROOT_ENV = "AEMG_DATA"
DEFAULT_DATA_ROOT = "../shared/data"  # relative to the current directory (the project root)
MIN_FS_HZ, MAX_FS_HZ = 50.0, 100_000.0
FS_TOLERANCE = 0.005  # a file's own rate may differ from the manifest's nominal one by this fraction
DEFAULT_FIELD_REGEX = r"[^/]+?"
SAFE_ID = re.compile(r"[A-Za-z0-9._-]+")

_FIELD = re.compile(r"\{([A-Za-z_]\w*)\}")
_REQUIRED = ("name", "folder", "pattern", "reader", "units", "electrodes", "labels")
_OPTIONAL = ("fs", "rest_label", "subject", "session", "derived", "field_regex", "group_by", "label_names_from",
             "adc_range", "notch_hz", "device", "license", "description", "exclude", "channels", "file_channels",
             "events", "cue")


@dataclass
class DatasetManifest:
    """A validated dataset manifest (see the module docstring for every field)."""

    name: str
    folder: str
    pattern: str
    reader: Reader
    fs: float | None  # None: every file declares its own rate (reader.provides_fs)
    units: str
    electrodes: str | dict[str, Any]
    labels: dict[int, str]
    rest_label: int | None = None
    subject: str = "{subject}"
    session: str = "{session}"
    derived: dict[str, str] = field(default_factory=dict)
    field_regex: dict[str, str] = field(default_factory=dict)
    group_by: tuple[str, ...] = ()
    label_names_from: str | None = None
    adc_range: tuple[float, float] | None = None
    notch_hz: tuple[float, ...] = ()
    device: str = ""
    license: str = ""
    description: str = ""
    exclude: tuple[str, ...] = ()
    channels: ChannelMap | None = None
    file_channels: int | None = None
    events: EventsTable | None = None
    cue: CueProtocol | None = None
    source: str = "<dict>"  # where the manifest came from, for error messages

    @classmethod
    def from_yaml(cls, path: str | Path) -> "DatasetManifest":
        """Read and validate a manifest file; ManifestError names the file and the bad field."""
        path = Path(path)
        try:
            spec = read_yaml(path.read_text(), path)  # YAML 1.2 numbers: `fs: 1e3` is 1000 Hz
        except FileNotFoundError:
            raise ManifestError(f"{path}: manifest file not found") from None
        except (IsADirectoryError, UnicodeDecodeError):
            raise ManifestError(f"{path}: not a YAML manifest file") from None
        except ConfigError as err:  # a syntax error, with its line and column
            raise ManifestError(str(err)) from None
        return cls.from_dict(spec, source=str(path))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], source: str = "<dict>") -> "DatasetManifest":
        """Validate a manifest mapping; ManifestError names `source` and the bad field."""
        if not isinstance(spec, Mapping):
            raise ManifestError(f"{source}: a manifest must be a mapping of fields, got {type(spec).__name__}")
        try:
            return cls._validated(spec, source)
        except ManifestError as err:
            raise ManifestError(f"{source}: {err}") from None

    @classmethod
    def _validated(cls, spec: Mapping[str, Any], source: str) -> "DatasetManifest":
        unknown = sorted(set(spec) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise ManifestError(f"unknown field(s) {unknown}; allowed: {sorted(_REQUIRED + _OPTIONAL)}")
        missing = [k for k in _REQUIRED if spec.get(k) in (None, "")]
        if missing:
            raise ManifestError(f"missing required field(s) {missing}")
        name = _text(spec, "name")
        if not SAFE_ID.fullmatch(name):
            raise ManifestError(f"field `name`: {name!r} may only hold letters, digits, '-', '_' and '.'")
        pattern = _relative_path(spec, "pattern")
        pattern_fields = _pattern_fields(pattern)
        field_regex = _field_regexes(spec.get("field_regex") or {}, pattern_fields)
        derived = _derived(spec.get("derived") or {}, pattern_fields)
        known = pattern_fields + tuple(derived)
        try:
            reader = make_reader(spec["reader"])
        except ManifestError as err:
            raise ManifestError(f"field `reader`: {err}") from None
        subject = _template(spec, "subject", known)
        session = _template(spec, "session", known)
        label_names_from = spec.get("label_names_from")
        if label_names_from is not None and not (isinstance(label_names_from, str) and "/" not in label_names_from):
            raise ManifestError(f"field `label_names_from`: must be a file name, got {label_names_from!r}")
        labels = _labels(spec["labels"])
        rest = spec.get("rest_label")
        if rest is not None and (isinstance(rest, bool) or not isinstance(rest, int) or rest not in labels):
            raise ManifestError(f"field `rest_label`: {rest!r} is not one of the labels {sorted(labels)}")
        events = EventsTable.from_spec(spec["events"], known) if spec.get("events") is not None else None
        cue = CueProtocol.from_spec(spec["cue"], labels, rest) if spec.get("cue") is not None else None
        _check_label_source(reader, "label" in known, label_names_from)
        _check_other_label_sources(reader, "label" in known or bool(label_names_from), events, cue)
        channels, file_channels = _channels(spec, reader)
        if spec.get("fs") is None and not reader.provides_fs:
            raise ManifestError("missing required field(s) ['fs'] (this reader kind does not read the rate from "
                                "the file)")
        manifest = cls(
            name=name, folder=_relative_path(spec, "folder"), pattern=pattern, reader=reader,
            fs=None if spec.get("fs") is None else _sampling_rate(spec["fs"]), units=_text(spec, "units"),
            electrodes=_electrodes(spec["electrodes"]),
            labels=labels, rest_label=rest, subject=subject, session=session, derived=derived,
            field_regex=field_regex, group_by=_group_by(spec.get("group_by"), known, subject, session),
            label_names_from=label_names_from, adc_range=_adc_range(spec.get("adc_range")),
            notch_hz=_notch_hz(spec.get("notch_hz")),
            device=_text(spec, "device"), license=_text(spec, "license"), description=_text(spec, "description"),
            exclude=_globs(spec.get("exclude") or []), channels=channels, file_channels=file_channels,
            events=events, cue=cue, source=source,
        )
        manifest.regex()  # compile now so a bad field_regex fails here, not mid-walk
        return manifest

    def regex(self) -> re.Pattern[str]:
        """The pattern as an anchored regular expression with one named group per field."""
        return _compile_pattern(self.pattern, tuple(sorted(self.field_regex.items())))

    def layout(self, dataset_dir: Path) -> ElectrodeLayout:
        """The electrode layout: inline, or read from `dataset_dir/<electrodes file>`."""
        if isinstance(self.electrodes, dict):
            return ElectrodeLayout.from_dict(self.electrodes)
        path = dataset_dir / self.electrodes
        try:
            return ElectrodeLayout.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise DataError(path, "electrode layout file not found") from None
        except (json.JSONDecodeError, ManifestError) as err:
            raise DataError(path, f"bad electrode layout ({err})") from None

    def is_excluded(self, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, glob) for glob in self.exclude)

    def file_values(self, rel: str, where: Path) -> dict[str, str] | None:
        """Field values of a file path (derived fields included), or None if it does not match."""
        match = self.regex().fullmatch(rel)
        if match is None:
            return None
        values = match.groupdict()
        for name, expression in self.derived.items():
            integers = {k: _integer(values[k], k, where) for k in _expression_names(expression)}
            try:
                values[name] = str(_evaluate(_parse_expression(expression), integers))
            except ZeroDivisionError:
                raise DataError(where, f"derived field {name} = {expression!r} divides by zero for {integers}") from None
        return values


@dataclass(frozen=True)
class SourceFile:
    """One data file of a recording: path relative to the dataset folder, file-name label
    (None when the reader or a metadata file supplies it) and repetition (-1 if none)."""

    path: str
    label: int | None
    rep: int


@dataclass(frozen=True)
class ManifestJob:
    """One recording to read: small and picklable, so it can be shipped to a Ray task."""

    manifest: DatasetManifest
    root: str
    key: str  # f"{dataset}/{subject}/{session}", equal to the loaded RawRecording.key
    subject: str
    session: str
    files: tuple[SourceFile, ...]

    def load(self) -> RawRecording:
        """Read every file, concatenate them and build segments and joins."""
        m = self.manifest
        folder = Path(self.root) / m.folder
        layout = m.layout(folder)
        metadata = _MetadataLabels(m) if m.label_names_from else None
        channels = m.channels.resolved(folder, layout) if m.channels else None
        pieces: list[np.ndarray] = []
        segments: list[Segment] = []
        runs_seen: Counter[int] = Counter()  # label -> runs so far, the rep of label-column segments
        start = 0
        fs = m.fs
        for source in self.files:
            path = folder / source.path
            data = m.reader.read(path, m.file_channels if channels else layout.n_channels)
            emg = channels.select(data, path) if channels else data.emg
            fs = _agreed_rate(fs, data.fs, m, path)
            n = emg.shape[0]
            if data.labels is not None:
                for a, b, label, rep in _label_runs(data.labels, m.labels, path, data.reps):
                    segments.append(Segment(start + a, start + b, label, m.labels[label],
                                            rep if rep > 0 else runs_seen[label]))
                    runs_seen[label] += 1
            elif m.events or m.cue:
                for a, b, label, rep in self._spans(folder, path, n, fs):
                    segments.append(Segment(start + a, start + b, label, m.labels[label], rep))
            else:
                label = metadata.label(path, source.label) if metadata else source.label
                segments.append(Segment(start, start + n, label, m.labels[label], source.rep))
            pieces.append(emg)
            start += n
        emg = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        validate_segments(segments, emg.shape[0], self.key)
        return RawRecording(
            dataset=m.name, subject=self.subject, session=self.session, fs=fs, emg=emg, units=m.units,
            layout=layout, segments=segments, joins=np.cumsum([p.shape[0] for p in pieces[:-1]]).tolist(),
            rest_label=m.rest_label, device=m.device, license=m.license,
            source_files=[f"{m.folder}/{f.path}" for f in self.files], adc_range=m.adc_range, notch_hz=m.notch_hz,
            label_names=dict(m.labels),
        )

    def _spans(self, folder: Path, path: Path, n_samples: int, fs: float) -> list[Span]:
        """A file's labeled spans from the manifest's events table or cue protocol."""
        m = self.manifest
        if m.cue:
            return m.cue.spans(path, n_samples, fs, m.rest_label)
        values = m.file_values(path.relative_to(folder).as_posix(), path) or {}
        return m.events.spans(m.events.file_for(path, folder, values), n_samples, fs, m.labels)


def manifest_jobs(manifest: DatasetManifest, data_root: str | Path) -> list[ManifestJob]:
    """One job per recording of the dataset under `data_root`, in a deterministic order.

    Problems visible from file names alone (non-integer label, unknown label, an empty or
    colliding id, a stray file) raise DataError here, before any file is read.
    """
    folder = Path(data_root) / manifest.folder
    if not folder.is_dir():
        raise DataError(folder, f"dataset folder of {manifest.name} not found (data root {data_root})")
    manifest.layout(folder)  # a missing or bad electrodes.json fails before any work starts
    data_suffix = Path(manifest.pattern).suffix
    groups: dict[tuple[str, ...], list[tuple[tuple, SourceFile]]] = {}
    ids: dict[tuple[str, ...], tuple[str, str]] = {}
    for rel in _walk(folder):
        if manifest.is_excluded(rel):
            continue
        where = folder / rel
        values = manifest.file_values(rel, where)
        if values is None:
            if data_suffix and rel.endswith(data_suffix):
                raise DataError(where, f"has the data files' extension but does not match the pattern "
                                       f"{manifest.pattern!r}; add it to `exclude` in {manifest.source} if it is not data")
            continue
        label = _integer(values["label"], "label", where) if "label" in values else None
        if label is not None and label not in manifest.labels:
            raise DataError(where, f"label {label} is not one of the dataset's labels {sorted(manifest.labels)}")
        rep = _integer(values["rep"], "rep", where) if "rep" in values else -1
        group = tuple(values[name] for name in manifest.group_by)
        if group not in ids:  # the templates use only group_by fields, so one file tells the ids
            ids[group] = (_safe_id(manifest.subject.format(**values), "subject", where),
                          _safe_id(manifest.session.format(**values), "session", where))
        order = (rep, -1 if label is None else label, _natural(rel))
        groups.setdefault(group, []).append((order, SourceFile(rel, label, rep)))
    if not groups:
        raise DataError(folder, f"no file matches the pattern {manifest.pattern!r} of {manifest.source}")
    root = str(Path(data_root).absolute())  # Ray workers need not share the driver's working directory
    jobs: dict[str, ManifestJob] = {}
    for group in sorted(groups, key=lambda g: tuple(_natural(v) for v in g)):
        subject, session = ids[group]
        key = f"{manifest.name}/{subject}/{session}"
        if key in jobs:
            raise DataError(folder / groups[group][0][1].path,
                            f"two groups of files map to the same recording {key}; "
                            "check the subject/session templates and group_by")
        files = tuple(source for _, source in sorted(groups[group], key=lambda item: item[0]))
        jobs[key] = ManifestJob(manifest, root, key, subject, session, files)
    return list(jobs.values())


def shipped_manifests() -> dict[str, Path]:
    """The manifests shipped with the project: configs/datasets/<name>.yaml, by name."""
    return {p.stem: p for p in sorted((shipped_configs() / "datasets").glob("*.yaml"))}


def default_data_root() -> Path:
    """$AEMG_DATA, else ../shared/data relative to the current directory."""
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def resolve_source(source: str, data_root: str | Path | None = None) -> list[tuple[DatasetManifest, Path]]:
    """Turn `aemg prepare --source` into (manifest, data root) pairs.

    - a path to a .yaml/.yml manifest: that manifest; data root `data_root`, else the folder
      next to or around the manifest that holds the dataset's folder, else the default;
    - a shipped dataset name ("3dc"): its manifest with `data_root` or the default root;
    - a folder holding several dataset folders ("../shared/data"): every shipped manifest
      whose folder exists there; a single dataset's folder ("../shared/data/3dc") also works.
    """
    path = Path(source)
    if path.suffix in (".yaml", ".yml"):
        manifest = DatasetManifest.from_yaml(path)
        return [(manifest, Path(data_root) if data_root is not None else _root_near(manifest, path))]
    shipped = shipped_manifests()
    if source in shipped:
        root = Path(data_root) if data_root is not None else default_data_root()
        return [(DatasetManifest.from_yaml(shipped[source]), root)]
    if path.is_dir():
        manifests = [DatasetManifest.from_yaml(p) for p in shipped.values()]
        found = [(m, path) for m in manifests if (path / m.folder).is_dir()]
        found = found or [(m, path.resolve().parent) for m in manifests if path.resolve().name == m.folder]
        if not found:
            raise DataError(path, f"holds none of the shipped datasets' folders ({', '.join(m.folder for m in manifests)})")
        return found
    raise DataError(source, f"not a shipped dataset ({', '.join(shipped)}), a manifest .yaml or a data folder")


# --- manifest validation -------------------------------------------------------------------


def _text(spec: Mapping[str, Any], key: str) -> str:
    value = spec.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ManifestError(f"field `{key}`: expected text, got {value!r}")
    return str(value).strip()


def _relative_path(spec: Mapping[str, Any], key: str) -> str:
    value = _text(spec, key)
    if value.startswith("/") or "\\" in value or ".." in value.split("/"):
        raise ManifestError(f"field `{key}`: {value!r} must be a relative path with '/' separators and no '..'")
    return value.strip("/")


def _pattern_fields(pattern: str) -> tuple[str, ...]:
    names = _FIELD.findall(pattern)
    literal = _FIELD.sub("", pattern)
    if "{" in literal or "}" in literal:
        raise ManifestError(f"field `pattern`: {pattern!r} has a brace that is not a {{name}} field")
    repeated = sorted(n for n, c in Counter(names).items() if c > 1)
    if repeated:
        raise ManifestError(f"field `pattern`: field(s) {repeated} appear more than once")
    if not names:
        raise ManifestError(f"field `pattern`: {pattern!r} has no {{field}}")
    return tuple(names)


def _field_regexes(spec: Any, pattern_fields: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(spec, Mapping):
        raise ManifestError(f"field `field_regex`: expected a mapping field -> regex, got {spec!r}")
    for name, regex in spec.items():
        if name not in pattern_fields:
            raise ManifestError(f"field `field_regex`: {name!r} is not a field of the pattern {list(pattern_fields)}")
        try:
            re.compile(str(regex))
        except re.error as err:
            raise ManifestError(f"field `field_regex`: {name}: bad regular expression {regex!r} ({err})") from None
    return {str(k): str(v) for k, v in spec.items()}


def _derived(spec: Any, pattern_fields: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(spec, Mapping):
        raise ManifestError(f"field `derived`: expected a mapping name -> expression, got {spec!r}")
    for name, expression in spec.items():
        if not (isinstance(name, str) and name.isidentifier()) or name in pattern_fields:
            raise ManifestError(f"field `derived`: {name!r} must be a new field name (not one of the pattern's)")
        try:
            names = _expression_names(str(expression))
        except (SyntaxError, ValueError) as err:
            raise ManifestError(f"field `derived`: {name} = {expression!r}: {err}") from None
        unknown = sorted(set(names) - set(pattern_fields))
        if unknown:
            raise ManifestError(f"field `derived`: {name} = {expression!r} uses {unknown}, not fields of the pattern")
    return {name: str(expression) for name, expression in spec.items()}


def _template(spec: Mapping[str, Any], key: str, known: tuple[str, ...]) -> str:
    template = _text(spec, key) or f"{{{key}}}"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ManifestError(f"field `{key}`: bad template {template!r} ({err})") from None
    for _, name, spec_, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec_ or conversion:
            raise ManifestError(f"field `{key}`: template {template!r} may only use plain {{field}} references")
        if name not in known:
            hint = f"; give a `{key}` template (a constant is fine)" if key not in spec else ""
            raise ManifestError(f"field `{key}`: uses {{{name}}} but the pattern and derived fields are {list(known)}{hint}")
    return template


def _check_label_source(reader: Reader, has_label_field: bool, label_names_from: str | None) -> None:
    if reader.provides_labels and (has_label_field or label_names_from):
        raise ManifestError("field `reader`: a label-column reader supplies the labels; "
                            "do not also name a `label` field or `label_names_from`")


def _check_other_label_sources(reader: Reader, file_label: bool, events: EventsTable | None,
                               cue: CueProtocol | None) -> None:
    """Exactly one label source: the file name (or metadata), the reader, an events table or a cue protocol."""
    sources = [name for name, present in (("a {label} field or label_names_from", file_label),
                                          ("the reader's labels", reader.provides_labels),
                                          ("`events`", events is not None), ("`cue`", cue is not None)) if present]
    if len(sources) > 1:
        raise ManifestError(f"more than one label source: {' and '.join(sources)}; keep one")
    if not sources:
        raise ManifestError("field `pattern`: no label source; add a {label} field, a derived `label`, "
                            "`label_names_from`, a reader with labels (label_column, or `labels` of a mat/hdf5/"
                            "numpy reader), `events` or `cue`")


def _channels(spec: Mapping[str, Any], reader: Reader) -> tuple[ChannelMap | None, int | None]:
    """The manifest's channel map and the column count of its files."""
    channels = ChannelMap.from_spec(spec["channels"]) if spec.get("channels") is not None else None
    count = spec.get("file_channels")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ManifestError(f"field `file_channels`: expected a positive number of columns, got {count!r}")
    if count is not None and channels is None:
        raise ManifestError("field `file_channels`: only meaningful with `channels` (without it every column is "
                            "a channel of the layout)")
    if channels is not None and count is None and isinstance(reader, BinaryReader):
        raise ManifestError("field `file_channels`: raw binary with a `channels` map needs the number of "
                            "interleaved channels")
    return channels, count


def _agreed_rate(rate: float | None, file_rate: float | None, manifest: DatasetManifest, path: Path) -> float:
    """The recording's rate: the manifest's (checked against the file's own, if it declares one), else the first
    file's; every file of a recording must agree."""
    if file_rate is None:
        return float(rate)  # the manifest requires `fs` for readers without a file rate
    if not MIN_FS_HZ <= file_rate <= MAX_FS_HZ:
        raise DataError(path, f"declares a sampling rate of {file_rate:g} Hz, absurd for surface EMG")
    if rate is not None and abs(file_rate - rate) > FS_TOLERANCE * rate:
        source = f"the manifest's fs ({manifest.source})" if manifest.fs == rate else "the recording's other files"
        raise DataError(path, f"declares {file_rate:g} Hz but {source} says {rate:g} Hz")
    return rate if rate is not None else file_rate


def _labels(spec: Any) -> dict[int, str]:
    if not isinstance(spec, Mapping) or not spec:
        raise ManifestError(f"field `labels`: expected a non-empty mapping id -> name, got {spec!r}")
    labels = {}
    for key, name in spec.items():
        if isinstance(key, bool) or not str(key).lstrip("-").isdigit():
            raise ManifestError(f"field `labels`: id {key!r} is not an integer")
        if not isinstance(name, str) or not name.strip():
            raise ManifestError(f"field `labels`: id {key!r} needs a name, got {name!r}")
        labels[int(key)] = name.strip()
    return dict(sorted(labels.items()))


def _sampling_rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError(f"field `fs`: expected a number of Hz, got {value!r}")
    if not MIN_FS_HZ <= value <= MAX_FS_HZ:
        raise ManifestError(f"field `fs`: {value} Hz is absurd for surface EMG (expected {MIN_FS_HZ:g}-{MAX_FS_HZ:g} Hz)")
    return float(value)


def _electrodes(value: Any) -> str | dict[str, Any]:
    if isinstance(value, Mapping):
        try:
            ElectrodeLayout.from_dict(value)  # inline layouts are checked now; files when the data is found
        except ManifestError as err:
            raise ManifestError(f"field `electrodes`: {err}") from None
        return dict(value)
    return _relative_path({"electrodes": value}, "electrodes")


def _group_by(value: Any, known: tuple[str, ...], subject: str, session: str) -> tuple[str, ...]:
    used = [name for name in known if f"{{{name}}}" in subject + session]
    if value is None:
        return tuple(used)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"field `group_by`: expected a list of field names, got {value!r}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ManifestError(f"field `group_by`: {unknown} are not fields of the pattern or derived")
    loose = sorted(set(used) - set(value))
    if loose:
        raise ManifestError(f"field `group_by`: the subject/session templates use {loose}, which must be in group_by")
    return tuple(value)


def _adc_range(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ManifestError(f"field `adc_range`: expected [low, high], got {value!r}") from None
    if not low < high:
        raise ManifestError(f"field `adc_range`: low {low} must be below high {high}")
    return low, high


def _notch_hz(value: Any) -> tuple[float, ...]:
    if value is None:
        return ()
    try:
        lines = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ManifestError(f"field `notch_hz`: expected a list of frequencies in Hz, got {value!r}") from None
    if not all(math.isfinite(f) and f > 0 for f in lines):
        raise ManifestError(f"field `notch_hz`: frequencies must be positive numbers of Hz, got {value!r}")
    return tuple(sorted(set(lines)))


def _globs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"field `exclude`: expected a list of glob patterns, got {value!r}")
    return tuple(value)


@lru_cache(maxsize=64)
def _compile_pattern(pattern: str, field_regex: tuple[tuple[str, str], ...]) -> re.Pattern[str]:
    overrides = dict(field_regex)
    parts, last = [], 0
    for match in _FIELD.finditer(pattern):
        name = match.group(1)
        parts += [re.escape(pattern[last:match.start()]), f"(?P<{name}>{overrides.get(name, DEFAULT_FIELD_REGEX)})"]
        last = match.end()
    parts.append(re.escape(pattern[last:]))
    try:
        return re.compile("".join(parts))
    except re.error as err:
        raise ManifestError(f"field `field_regex`: the pattern does not compile ({err})") from None


# --- derived-field expressions: integer arithmetic over field names, nothing else -----------

_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b}
_ALLOWED_NODES = (ast.BinOp, ast.Name, ast.Load, ast.Constant, *_OPERATORS)


@lru_cache(maxsize=256)
def _parse_expression(expression: str) -> ast.expr:
    """Parse and whitelist an expression; ValueError names the first forbidden construct."""
    tree = ast.parse(expression, mode="eval").body
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES) or (isinstance(node, ast.Constant) and type(node.value) is not int):
            raise ValueError("only integers, field names, + - * // % and parentheses are allowed, "
                             f"not {type(node).__name__}")
    return tree


def _expression_names(expression: str) -> list[str]:
    return sorted({n.id for n in ast.walk(_parse_expression(expression)) if isinstance(n, ast.Name)})


def _evaluate(node: ast.expr, values: Mapping[str, int]) -> int:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    assert isinstance(node, ast.BinOp)  # guaranteed by _parse_expression
    return _OPERATORS[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))


# --- walking and reading -------------------------------------------------------------------


def _walk(folder: Path) -> list[str]:
    """Every file under `folder` as a '/'-separated relative path, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        found += [name if rel_dir == "." else f"{rel_dir}/{name}" for name in filenames]
    return sorted(found)


def _natural(text: str) -> tuple:
    """Sort key comparing digit runs as numbers: R_2 before R_10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _integer(text: str, name: str, where: Path) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(where, f"field {name} is {text!r}, not an integer") from None


def _safe_id(raw: str, what: str, where: Path) -> str:
    """A zarr- and filesystem-safe id: other characters become '_'."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", raw)
    if safe in ("", ".", "..") or safe.startswith("__"):  # zarr reserves names starting with '__'
        raise DataError(where, f"matches the pattern but yields no usable {what} id ({raw!r})")
    return safe


def _label_runs(labels: np.ndarray, known: Mapping[int, str], path: Path,
                reps: np.ndarray | None = None) -> list[Span]:
    """(start, stop, label, rep) of every run of equal (label, rep) in a label vector; rep -1 without a rep vector."""
    unknown = np.setdiff1d(np.unique(labels), np.fromiter(known, dtype=np.int64))
    if unknown.size:
        row = int(np.flatnonzero(labels == unknown[0])[0])
        raise DataError(path, f"label {int(unknown[0])} (sample {row}) is not one of the dataset's labels {sorted(known)}")
    reps = np.full(labels.shape, -1, dtype=np.int64) if reps is None else reps
    cuts = np.flatnonzero((np.diff(labels) != 0) | (np.diff(reps) != 0)) + 1
    starts, stops = np.r_[0, cuts], np.r_[cuts, labels.size]
    return list(zip(starts.tolist(), stops.tolist(), labels[starts].tolist(), reps[starts].tolist()))


class _MetadataLabels:
    """Labels from per-folder metadata files (e.g. myodisco's metadata.json), cached per folder."""

    def __init__(self, manifest: DatasetManifest):
        self.manifest = manifest
        self.by_folder: dict[Path, dict[str, Mapping[str, Any]]] = {}

    def _entries(self, folder: Path) -> dict[str, Mapping[str, Any]]:
        if folder not in self.by_folder:
            path = folder / str(self.manifest.label_names_from)
            try:
                raw = json.loads(path.read_text())
            except FileNotFoundError:
                raise DataError(path, "label metadata file not found") from None
            except json.JSONDecodeError as err:
                raise DataError(path, f"not valid JSON ({err})") from None
            # Keys are the source's original paths (other folders, even other subject
            # numbers), so only the file name identifies an entry; flags like
            # "continuous": false sit beside the entries and are not files.
            entries = {k: v for k, v in raw.items() if isinstance(v, Mapping)} if isinstance(raw, Mapping) else {}
            names = Counter(k.replace("\\", "/").rsplit("/", 1)[-1] for k in entries)
            twice = sorted(n for n, c in names.items() if c > 1)
            if twice:
                raise DataError(path, f"lists the file name(s) {twice[:3]} more than once, so entries are ambiguous")
            self.by_folder[folder] = {k.replace("\\", "/").rsplit("/", 1)[-1]: v for k, v in entries.items()}
        return self.by_folder[folder]

    def label(self, path: Path, file_label: int | None) -> int:
        labels = self.manifest.labels
        metadata = path.parent / str(self.manifest.label_names_from)
        entry = self._entries(path.parent).get(path.name)
        if entry is None or "class_idx" not in entry:
            raise DataError(path, f"has no class_idx in {metadata}")
        label, name = int(entry["class_idx"]), str(entry.get("class_name", ""))
        if file_label is not None and label != file_label:
            raise DataError(path, f"{metadata.name} says class {label} but the file name says {file_label}")
        if label not in labels:
            raise DataError(path, f"label {label} is not one of the dataset's labels {sorted(labels)}")
        if name and name != labels[label]:
            raise DataError(path, f"{metadata.name} names class {label} {name!r} "
                                  f"but the manifest calls it {labels[label]!r}")
        return label


def _root_near(manifest: DatasetManifest, yaml_path: Path) -> Path:
    """The folder holding the dataset's folder, looking beside and around the manifest."""
    here = yaml_path.resolve().parent
    for candidate in (here, here.parent):
        if (candidate / manifest.folder).is_dir():
            return candidate
    return default_data_root()
