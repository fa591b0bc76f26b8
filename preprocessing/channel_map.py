"""Channel maps: which columns of a source file are the electrode layout's channels, and in what order.

A manifest's `channels` field, when a file holds more columns than electrodes (a 96-column export whose
first 64 columns are a grid, a WFDB record with ECG beside the EMG) or holds them in another order (a
grid wired column by column):

    channels: [3, 0, 1, 2]            column indices, in the layout's channel order
    channels: "0:64"                  a range of columns (start:stop or start:stop:step, stop excluded)
    channels: [EMG1, EMG2, EMG3]      names the file gives its columns (WFDB, EDF/BDF headers)
    channels: grid_map.csv            a CSV in the dataset folder with a `column` and, per electrode, either
                                      `channel` (layout index), `name` (layout channel name) or `row` and
                                      `col` (grid position): one row per electrode of the layout

Channel i of the recording is then the mapped column of layout channel i, whatever the file's order,
so positions (and the model's spatial embedding) follow the electrodes, not the wiring.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, ManifestError
from .geometry import ElectrodeLayout
from .readers import FileData

_RANGE = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*(?::\s*(\d+)\s*)?")


@dataclass(frozen=True)
class ChannelMap:
    """Exactly one of: column indices, column names, or a map file (resolved to indices per layout)."""

    columns: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    file: str = ""

    @classmethod
    def from_spec(cls, spec: Any) -> "ChannelMap":
        """The map a manifest's `channels` value describes (ManifestError if it is none of the forms)."""
        if isinstance(spec, str) and (match := _RANGE.fullmatch(spec)):
            start, stop, step = (int(g) if g else None for g in match.groups())
            columns = tuple(range(start, stop, step or 1))
            if not columns:
                raise ManifestError(f"field `channels`: range {spec!r} selects no column")
            return cls(columns=columns)
        if isinstance(spec, str) and spec.strip():
            if spec.startswith("/") or ".." in spec.split("/"):
                raise ManifestError(f"field `channels`: map file {spec!r} must be a relative path inside the folder")
            return cls(file=spec.strip())
        if isinstance(spec, (list, tuple)) and spec:
            if all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in spec):
                return cls(columns=_distinct(tuple(spec)))
            if all(isinstance(c, str) and c.strip() for c in spec):
                return cls(names=_distinct(tuple(c.strip() for c in spec)))
        raise ManifestError(f"field `channels`: expected column indices, a 'start:stop' range, channel names or a "
                            f"map file, got {spec!r}")

    def resolved(self, folder: Path, layout: ElectrodeLayout) -> "ChannelMap":
        """The map with a map file read into column indices in the layout's order; DataError names the file."""
        if not self.file:
            if len(self.columns or self.names) != layout.n_channels:
                raise DataError(folder, f"`channels` selects {len(self.columns or self.names)} columns but the "
                                        f"electrode layout has {layout.n_channels} channels")
            return self
        path = folder / self.file
        try:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            raise DataError(path, "channel map file not found") from None
        except (UnicodeDecodeError, csv.Error) as err:
            raise DataError(path, f"not a readable CSV channel map ({err})") from None
        return ChannelMap(columns=_columns_from_rows(rows, layout, path))

    def select(self, data: FileData, path: Path) -> np.ndarray:
        """The layout's channels from a file's columns (DataError naming the file when one is missing)."""
        if self.names:
            if data.channel_names is None:
                raise DataError(path, "`channels` selects by name but this file does not name its channels")
            where = {name.strip(): i for i, name in enumerate(data.channel_names)}
            missing = [n for n in self.names if n not in where]
            if missing:
                raise DataError(path, f"has no channel named {missing[:5]} (it has {list(data.channel_names)[:12]})")
            columns = [where[n] for n in self.names]
        else:
            columns = list(self.columns)
        width = data.emg.shape[1]
        if max(columns) >= width:
            raise DataError(path, f"`channels` selects column {max(columns)} but the file has {width} columns")
        return np.ascontiguousarray(data.emg[:, columns])


def _distinct(values: tuple) -> tuple:
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        raise ManifestError(f"field `channels`: {repeated} selected more than once")
    return values


def _columns_from_rows(rows: list[dict[str, str]], layout: ElectrodeLayout, path: Path) -> tuple[int, ...]:
    """Layout channel index -> column, from a map file's rows (one per electrode)."""
    header = set(rows[0]) if rows else set()
    if "column" not in header:
        raise DataError(path, f"channel map needs a `column` header (and channel, name or row+col); got {sorted(header)}")
    if "channel" in header:
        key, index = ("channel",), {(str(i),): i for i in range(layout.n_channels)}
    elif "name" in header:
        key, index = ("name",), {(n,): i for i, n in enumerate(layout.names)}
    elif {"row", "col"} <= header:
        key = ("row", "col")
        index = {(str(int(r)), str(int(c))): i for i, (r, c) in enumerate(zip(layout.row, layout.col)) if r >= 0}
    else:
        raise DataError(path, "channel map rows need `channel`, `name` or `row` and `col` beside `column`")
    columns: dict[int, int] = {}
    for line, row in enumerate(rows, start=2):
        electrode = tuple((row.get(k) or "").strip() for k in key)
        column = (row.get("column") or "").strip()
        if electrode not in index:
            raise DataError(path, f"line {line}: {dict(zip(key, electrode))} is not an electrode of the layout")
        if not column.isdigit():
            raise DataError(path, f"line {line}: column {column!r} is not a non-negative integer")
        if index[electrode] in columns:
            raise DataError(path, f"line {line}: electrode {dict(zip(key, electrode))} is mapped twice")
        columns[index[electrode]] = int(column)
    missing = sorted(set(range(layout.n_channels)) - set(columns))
    if missing:
        raise DataError(path, f"maps no column to layout channel(s) {missing[:8]} of {layout.n_channels}")
    ordered = tuple(columns[i] for i in range(layout.n_channels))
    if len(set(ordered)) != len(ordered):
        raise DataError(path, "maps one column to two electrodes")
    return ordered
