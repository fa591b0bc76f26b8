"""Label sources that are not in the data file: an events table beside it, or a cue protocol's timing.

A manifest names at most one label source: a `{label}` field in the file name (one class per file), a
reader that returns per-sample labels (label_column, or a mat/hdf5/numpy reader with `labels`), or one
of these two:

    events:                         a table of labeled spans per data file (BIDS events.tsv style)
      path: "sub-{subject}/emg/sub-{subject}_task-{task}_events.tsv"   template over the pattern's
                                    fields, relative to the dataset folder; `{stem}` is the data file's
                                    name without its extension, `{dir}` its folder
      onset: onset                  column of the span's start (seconds, or samples with units: samples)
      duration: duration            column of its length
      label: trial_type             column of the class: an id of `labels` or one of its names
      repetition: null              optional column of the repetition index
      units: s                      s or samples
    cue:                            a fixed protocol: the recording follows the cue's clock from its start
      initial_rest_s: 5             rest before the first gesture
      sequence: [1, 2, 3]           the gestures in the order they were cued
      gesture_s: 5                  each gesture's hold
      rest_s: 3                     the rest after each gesture
      repetitions: 6
      order: gesture                gesture: each gesture `repetitions` times in a row, then the next
                                    (NinaPro); sequence: the whole sequence once per repetition

Both give (start, stop, label, rep) spans in samples of one file; spans outside the file, overlapping
spans, unknown labels and a protocol longer than the file raise DataError naming the file at fault.
Time not covered by a span (between events, after the protocol) is unlabeled and so in no labeled window.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import DataError, ManifestError

Span = tuple[int, int, int, int]  # start, stop, label, rep (samples of one file)
CUE_ORDERS = ("gesture", "sequence")
EVENT_UNITS = ("s", "samples")


@dataclass(frozen=True)
class EventsTable:
    path: str
    onset: str = "onset"
    duration: str = "duration"
    label: str = "trial_type"
    repetition: str | None = None
    units: str = "s"

    @classmethod
    def from_spec(cls, spec: Any, known_fields: tuple[str, ...]) -> "EventsTable":
        table = _build(cls, spec, "events")
        if table.units not in EVENT_UNITS:
            raise ManifestError(f"field `events`: units must be one of {EVENT_UNITS}, got {table.units!r}")
        if not isinstance(table.path, str) or table.path.startswith("/") or ".." in table.path.split("/"):
            raise ManifestError(f"field `events`: path {table.path!r} must be a relative path template")
        try:
            table.path.format(**{name: "" for name in (*known_fields, "stem", "dir")})
        except (KeyError, IndexError, ValueError) as err:
            raise ManifestError(f"field `events`: path {table.path!r} uses {err}, not a field of the pattern "
                                f"{list(known_fields)} or stem/dir") from None
        return table

    def file_for(self, data_file: Path, folder: Path, values: Mapping[str, str]) -> Path:
        rel = data_file.relative_to(folder)
        parent = rel.parent.as_posix()
        return folder / self.path.format(**values, stem=rel.stem, dir="" if parent == "." else parent)

    def spans(self, events_file: Path, n_samples: int, fs: float, labels: Mapping[int, str]) -> list[Span]:
        """Spans of one data file of n_samples at fs from its events table."""
        rows = _table_rows(events_file)
        by_name = {name: label for label, name in labels.items()}
        seen: Counter[int] = Counter()
        spans = []
        for line, row in enumerate(rows, start=2):
            onset = _number(row, self.onset, events_file, line)
            duration = _number(row, self.duration, events_file, line)
            scale = fs if self.units == "s" else 1.0
            start, stop = int(round(onset * scale)), int(round((onset + duration) * scale))
            if not (duration > 0 and 0 <= start < stop <= n_samples):
                raise DataError(events_file, f"line {line}: event [{onset:g}, {onset + duration:g}) {self.units} is "
                                             f"empty or outside the recording of {n_samples / scale:g} {self.units}")
            label = _label(row, self.label, labels, by_name, events_file, line)
            rep = int(_number(row, self.repetition, events_file, line)) if self.repetition else seen[label]
            seen[label] += 1
            spans.append((start, stop, label, rep))
        ordered = sorted(spans)
        for before, after in zip(ordered[:-1], ordered[1:]):
            if after[0] < before[1]:
                raise DataError(events_file, f"events at samples {before[0]} and {after[0]} overlap")
        return spans


@dataclass(frozen=True)
class CueProtocol:
    sequence: tuple[int, ...]
    gesture_s: float
    rest_s: float
    repetitions: int = 1
    initial_rest_s: float = 0.0
    order: str = "gesture"

    @classmethod
    def from_spec(cls, spec: Any, labels: Mapping[int, str], rest_label: int | None) -> "CueProtocol":
        if isinstance(spec, Mapping) and isinstance(spec.get("sequence"), list):
            spec = {**spec, "sequence": tuple(spec["sequence"])}
        cue = _build(cls, spec, "cue")
        if not cue.sequence or not all(isinstance(g, int) and not isinstance(g, bool) for g in cue.sequence):
            raise ManifestError(f"field `cue`: sequence must be a non-empty list of label ids, got {cue.sequence!r}")
        unknown = sorted(set(cue.sequence) - set(labels))
        if unknown:
            raise ManifestError(f"field `cue`: sequence holds {unknown}, not labels of the dataset {sorted(labels)}")
        for name in ("gesture_s", "rest_s", "initial_rest_s"):
            value = getattr(cue, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ManifestError(f"field `cue`: {name} must be a non-negative number of seconds, got {value!r}")
        if not cue.gesture_s > 0 or isinstance(cue.repetitions, bool) or not isinstance(cue.repetitions, int) \
                or cue.repetitions < 1:
            raise ManifestError("field `cue`: gesture_s must be > 0 and repetitions a positive integer")
        if cue.order not in CUE_ORDERS:
            raise ManifestError(f"field `cue`: order must be one of {CUE_ORDERS}, got {cue.order!r}")
        if (cue.rest_s or cue.initial_rest_s) and rest_label is None:
            raise ManifestError("field `cue`: the protocol has rest periods; give `rest_label`")
        return cue

    @property
    def trials(self) -> list[tuple[int, int]]:
        """(gesture, repetition) in cue order."""
        if self.order == "gesture":
            return [(g, r) for g in self.sequence for r in range(self.repetitions)]
        return [(g, r) for r in range(self.repetitions) for g in self.sequence]

    @property
    def seconds(self) -> float:
        return self.initial_rest_s + len(self.trials) * (self.gesture_s + self.rest_s)

    def spans(self, path: Path, n_samples: int, fs: float, rest_label: int | None) -> list[Span]:
        """Spans of one file that followed the protocol from its first sample. Times are rounded once, on the
        cue's clock, so segment lengths do not drift over a long protocol."""
        if self.seconds * fs > n_samples + 1:
            raise DataError(path, f"the cue protocol lasts {self.seconds:g} s but the file holds {n_samples / fs:g} s")
        at = lambda seconds: min(int(round(seconds * fs)), n_samples)  # noqa: E731
        spans: list[Span] = []
        if self.initial_rest_s:
            spans.append((0, at(self.initial_rest_s), int(rest_label), 0))  # type: ignore[arg-type]
        t = self.initial_rest_s
        for gesture, rep in self.trials:
            spans.append((at(t), at(t + self.gesture_s), gesture, rep))
            if self.rest_s:
                spans.append((at(t + self.gesture_s), at(t + self.gesture_s + self.rest_s), int(rest_label), rep))  # type: ignore[arg-type]
            t += self.gesture_s + self.rest_s
        return [s for s in spans if s[1] > s[0]]


def _build(cls: type, spec: Any, field: str) -> Any:
    if not isinstance(spec, Mapping):
        raise ManifestError(f"field `{field}`: expected a mapping of options, got {spec!r}")
    try:
        return cls(**spec)
    except TypeError:
        raise ManifestError(f"field `{field}` takes options {sorted(cls.__dataclass_fields__)}, "
                            f"got {sorted(spec)}") from None


def _table_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV or TSV (by extension; .tsv and .txt are tab-separated) with a header line."""
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f, delimiter=delimiter))
    except FileNotFoundError:
        raise DataError(path, "events table not found") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(path, f"not a readable events table ({err})") from None


def _number(row: Mapping[str, str], column: str, path: Path, line: int) -> float:
    if column not in row:
        raise DataError(path, f"has no column {column!r} (columns: {sorted(k for k in row if k)})")
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        raise DataError(path, f"line {line}: {column} {row[column]!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(path, f"line {line}: {column} {row[column]!r} is not a finite number")
    return value


def _label(row: Mapping[str, str], column: str, labels: Mapping[int, str], by_name: Mapping[str, int], path: Path,
           line: int) -> int:
    if column not in row:
        raise DataError(path, f"has no column {column!r} (columns: {sorted(k for k in row if k)})")
    text = (row[column] or "").strip()
    if text.lstrip("-").isdigit() and int(text) in labels:
        return int(text)
    if text in by_name:
        return by_name[text]
    raise DataError(path, f"line {line}: label {text!r} is not one of the dataset's labels {dict(labels)}")
