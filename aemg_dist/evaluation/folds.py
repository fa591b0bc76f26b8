"""Folds and calibration budgets for the held-out subject.

**Folds** (`loso_folds`): within one dataset, one fold per subject; the fold's held-out rows
are every labeled window of that subject, its train rows every labeled window of the other
subjects of the same dataset. A dataset with a single subject (MultiDay: one subject, six
day-sessions) is split leave-one-session-out instead. Windows with label < 0 (no label) are in
no fold. Indices are row numbers of the input table, sorted.

**Calibration units.** The held-out windows are grouped into units that are never split
between calibration and test, so no window (and, for back-to-back windows, no sample) is in
both:

- rep >= 0: a unit is one repetition of one label in one recording, (key, label, rep);
- rep < 0 (no repetition ids): the windows of each (key, label), in time order (by start), are
  cut into `N_BLOCKS` contiguous blocks (fewer if there are fewer windows); a unit is one block.
  With overlapping windows (stride < length) two windows at a block border can share samples;
  the units are still disjoint sets of windows.

**Budgets** (`calibration_split`). Per label, the label's units are shuffled once by a
generator seeded with `seed` (independent of the budget). Of n units:

- test = the last `n_test = clip(round(test_percent/100 * n), 1, n - 1)` units (all n when
  n == 1, so a label with one unit is test-only). The test set depends only on (fold, seed,
  test_percent), so every budget of a seed is scored on the same test windows;
- calibration at budget b % = the first `k = round(b/100 * n)` units, at least 1 when b > 0,
  at most the n - n_test units of the calibration pool. So 0 % is empty, budgets are nested
  (a prefix of the same order), and 100 % means "all repetitions but the test ones".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

N_BLOCKS = 20  # time blocks per (key, label) when a dataset has no repetition ids (5 % resolution)
COLUMNS = ("dataset", "subject", "session", "label", "rep", "key", "start")


@dataclass(frozen=True)
class Fold:
    """One held-out subject (or session, for single-subject datasets) of one dataset.

    `train_idx`/`heldout_idx`: row numbers in the windows table. `heldout_label` and
    `heldout_unit` are aligned with `heldout_idx`: the label and calibration unit id (an integer,
    unique within the fold) of each held-out window; `calibration_split` uses them.
    """

    dataset: str
    held_out: str
    train_idx: np.ndarray
    heldout_idx: np.ndarray
    heldout_label: np.ndarray | None = None
    heldout_unit: np.ndarray | None = None


def _columns(windows: Any) -> dict[str, np.ndarray]:
    """The columns folds need, as numpy arrays, from a pyarrow table or a mapping of arrays."""
    out = {}
    for name in COLUMNS:
        col = windows[name] if not hasattr(windows, "column") else windows.column(name)
        if hasattr(col, "to_numpy") and not isinstance(col, np.ndarray):
            col = col.to_numpy()  # pyarrow (chunked) array or pandas series
        out[name] = np.asarray(col)
    for name in ("dataset", "subject", "session", "key"):
        out[name] = out[name].astype(str)
    for name in ("label", "rep", "start"):
        out[name] = out[name].astype(np.int64)
    return out


def _units(cols: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Calibration unit id of each row in idx (see the module docstring)."""
    key, label, rep, start = cols["key"][idx], cols["label"][idx], cols["rep"][idx], cols["start"][idx]
    names = np.empty(len(idx), dtype=object)
    has_rep = rep >= 0
    for i in np.flatnonzero(has_rep):
        names[i] = ("r", key[i], int(label[i]), int(rep[i]))
    no_rep = np.flatnonzero(~has_rep)
    if no_rep.size:
        groups: dict[tuple[str, int], list[int]] = {}
        for i in no_rep:
            groups.setdefault((key[i], int(label[i])), []).append(i)
        for (k, lab), members in groups.items():
            members = np.asarray(members)[np.argsort(start[members], kind="stable")]
            for b, block in enumerate(np.array_split(members, min(N_BLOCKS, len(members)))):
                for i in block:
                    names[i] = ("b", k, lab, b)
    _, unit = np.unique(np.array([repr(n) for n in names], dtype=str), return_inverse=True)
    return unit.astype(np.int64)


def loso_folds(windows: Any, dataset: str) -> list[Fold]:
    """Leave-one-subject-out folds of one dataset (leave-one-session-out if it has one subject)."""
    cols = _columns(windows)
    rows = np.flatnonzero((cols["dataset"] == dataset) & (cols["label"] >= 0))
    if rows.size == 0:
        raise ValueError(f"no labeled windows of dataset {dataset!r}")
    subjects = np.unique(cols["subject"][rows])
    group = cols["subject"] if subjects.size > 1 else cols["session"]
    folds = []
    for held in np.unique(group[rows]):
        heldout = rows[group[rows] == held]
        train = rows[group[rows] != held]
        if train.size == 0:
            raise ValueError(f"dataset {dataset!r} has a single subject and a single session; no fold")
        folds.append(Fold(dataset=dataset, held_out=str(held), train_idx=train, heldout_idx=heldout,
                          heldout_label=cols["label"][heldout], heldout_unit=_units(cols, heldout)))
    return folds


def _label_orders(fold: Fold, seed: int) -> list[np.ndarray]:
    """Per label (sorted), its unit ids in the seed's shuffled order."""
    rng = np.random.default_rng(seed)
    orders = []
    for lab in np.unique(fold.heldout_label):
        units = np.unique(fold.heldout_unit[fold.heldout_label == lab])
        orders.append(units[rng.permutation(units.size)])
    return orders


def calibration_split(fold: Fold, budget_percent: float, seed: int,
                      test_percent: float = 33.0) -> tuple[np.ndarray, np.ndarray]:
    """(calib_idx, test_idx): row numbers of the held-out windows used to calibrate / to score.

    See the module docstring for the rule; calibration and test never share a unit.
    """
    if not 0 <= budget_percent <= 100:
        raise ValueError(f"budget_percent must be in [0, 100], got {budget_percent}")
    if not 0 < test_percent < 100:
        raise ValueError(f"test_percent must be in (0, 100), got {test_percent}")
    if fold.heldout_label is None or fold.heldout_unit is None:
        raise ValueError("fold has no held-out labels/units; build it with loso_folds")
    calib_units, test_units = [], []
    for order in _label_orders(fold, seed):
        n = order.size
        n_test = n if n == 1 else int(np.clip(round(test_percent / 100 * n), 1, n - 1))
        pool = n - n_test
        k = int(round(budget_percent / 100 * n))
        if budget_percent > 0:
            k = max(k, 1)
        k = min(k, pool)
        calib_units.append(order[:k])
        test_units.append(order[n - n_test:])
    calib = np.isin(fold.heldout_unit, np.concatenate(calib_units))
    test = np.isin(fold.heldout_unit, np.concatenate(test_units))
    return np.sort(fold.heldout_idx[calib]), np.sort(fold.heldout_idx[test])
