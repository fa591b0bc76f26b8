"""Electrode geometry in a canonical limb frame.

Every channel of every dataset gets a position: the angle around the forearm (degrees,
0 = the device's reference electrode), the distance along the forearm from the band's
reference ring (mm, positive towards the hand) and, for grids, its row and column
(-1 elsewhere). Layouts are given as `electrodes.json`-style dicts:

    {"layout": "ring", "n_channels": 8}                      equally spaced ring
    {"layout": "ring", "channels": [{"angle_deg": 0}, ...]}  ring with explicit angles
    {"layout": "grid", "rows": 8, "cols": 8, "pitch_mm": 10, "circumference_mm": 260}
    {"layout": "custom", "channels": [{"angle_deg": 30, "z_mm": 20}, ...]}

Grid rows run along the forearm and columns around it, so a grid and a ring on the same
limb share one frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import ManifestError

LAYOUT_KINDS = ("ring", "grid", "custom")
DEFAULT_CIRCUMFERENCE_MM = 260.0  # adult forearm at the armband's position


@dataclass(frozen=True)
class ElectrodeLayout:
    """Channel positions of one device: arrays of length n_channels."""

    kind: str
    angle_deg: np.ndarray
    z_mm: np.ndarray
    row: np.ndarray
    col: np.ndarray
    names: tuple[str, ...]

    @property
    def n_channels(self) -> int:
        return int(self.angle_deg.shape[0])

    def positions(self) -> np.ndarray:
        """(n_channels, 4) float32: angle_deg, z_mm, row, col."""
        return np.stack([self.angle_deg, self.z_mm, self.row, self.col], axis=1).astype(np.float32)

    def canonical_coordinates(self, circumference_mm: float = DEFAULT_CIRCUMFERENCE_MM) -> np.ndarray:
        """(n_channels, 3) float32 points on a unit-radius cylinder: cos, sin, z in radii.

        Distinct electrodes map to distinct points; the model's spatial embedding uses these.
        """
        theta = np.deg2rad(self.angle_deg)
        radius_mm = circumference_mm / (2 * np.pi)
        return np.stack([np.cos(theta), np.sin(theta), self.z_mm / radius_mm], axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.kind,
            "channels": [
                {"index": i, "name": self.names[i], "angle_deg": float(self.angle_deg[i]),
                 "z_mm": float(self.z_mm[i]), "row": int(self.row[i]), "col": int(self.col[i])}
                for i in range(self.n_channels)
            ],
        }

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], n_channels: int | None = None) -> "ElectrodeLayout":
        """Build a layout from an electrodes.json-style dict; check it against n_channels."""
        kind = spec.get("layout")
        if kind not in LAYOUT_KINDS:
            raise ManifestError(f"electrode layout must be one of {LAYOUT_KINDS}, got {kind!r}")
        if "channels" in spec:  # explicit positions win (this is also how the corpus stores layouts)
            layout = _explicit(kind, spec["channels"])
        elif kind == "grid":
            layout = _grid(spec)
        elif kind == "ring" and ("n_channels" in spec or n_channels is not None):
            layout = _ring(int(spec.get("n_channels", n_channels)), float(spec.get("offset_deg", 0.0)))
        else:
            raise ManifestError(f"{kind} layout needs a 'channels' list" + (" or 'n_channels'" if kind == "ring" else ""))
        if n_channels is not None and layout.n_channels != n_channels:
            raise ManifestError(f"electrode layout has {layout.n_channels} channels but the data has {n_channels}")
        _check_distinct(layout)
        return layout


def _ring(n: int, offset_deg: float = 0.0) -> ElectrodeLayout:
    if n < 1:
        raise ManifestError(f"a ring needs at least one channel, got {n}")
    angles = (offset_deg + 360.0 * np.arange(n) / n) % 360.0
    return ElectrodeLayout("ring", angles, np.zeros(n), -np.ones(n), -np.ones(n), tuple(f"ch{i}" for i in range(n)))


def _grid(spec: Mapping[str, Any]) -> ElectrodeLayout:
    try:
        rows, cols = int(spec["rows"]), int(spec["cols"])
    except KeyError as missing:
        raise ManifestError(f"grid layout needs {missing}") from None
    pitch = float(spec.get("pitch_mm", 10.0))
    circumference = float(spec.get("circumference_mm", DEFAULT_CIRCUMFERENCE_MM))
    if rows < 1 or cols < 1 or pitch <= 0 or circumference <= 0:
        raise ManifestError(f"grid layout needs positive rows, cols, pitch_mm and circumference_mm, got {dict(spec)}")
    row, col = np.divmod(np.arange(rows * cols), cols)  # row-major channel order
    angle = float(spec.get("angle0_deg", 0.0)) + col * pitch / circumference * 360.0
    z = float(spec.get("z0_mm", 0.0)) + row * pitch
    names = tuple(f"r{r}c{c}" for r, c in zip(row, col))
    return ElectrodeLayout("grid", angle % 360.0, z.astype(float), row.astype(float), col.astype(float), names)


def _explicit(kind: str, channels: list[Mapping[str, Any]]) -> ElectrodeLayout:
    if not channels:
        raise ManifestError("electrode layout has an empty 'channels' list")
    try:
        angle = np.array([float(ch["angle_deg"]) for ch in channels]) % 360.0
    except KeyError:
        raise ManifestError("every channel of a ring/custom layout needs 'angle_deg'") from None
    z = np.array([float(ch.get("z_mm", 0.0)) for ch in channels])
    row = np.array([float(ch.get("row", -1)) for ch in channels])
    col = np.array([float(ch.get("col", -1)) for ch in channels])
    names = tuple(str(ch.get("name", f"ch{i}")) for i, ch in enumerate(channels))
    return ElectrodeLayout(kind, angle, z, row, col, names)


def _check_distinct(layout: ElectrodeLayout) -> None:
    coords = np.round(layout.positions()[:, :2], 6)
    if len(np.unique(coords, axis=0)) != layout.n_channels:
        raise ManifestError("two electrodes of the layout share the same position")
