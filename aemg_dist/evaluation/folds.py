"""Folds and calibration budgets for the held-out subject.

**Folds** (`loso_folds`): within one dataset, one fold per subject; the fold's held-out rows
are every labeled window of that subject, its train rows every labeled window of the other
subjects of the same dataset. A dataset with a single subject (MultiDay: one subject, six
day-sessions) is split leave-one-session-out instead. Windows with label < 0 (no label) are in
no fold. Indices are row numbers of the input table, sorted.

**Repetitions.** The held-out windows are grouped into repetitions that are never split between
calibration and test:

- rep >= 0: a repetition is one (recording, label, rep) of the protocol. Its windows come from one
  labeled segment, and windows of different segments are at least two segment margins apart;
- rep < 0 (no repetition ids, e.g. one long hold per class): the windows of each (recording, label),
  in time order, are cut into `N_PSEUDO_REPS` contiguous pseudo-repetitions of equal duration. The
  windows that come closer than `gap` to a cut are *guard* windows (unit -1): in neither calibration
  nor test, so a calibration window and a test window cut from the same segment never share a sample
  and are at least `gap` apart.

**Test set.** Per label, the repetitions are shuffled once by a generator seeded with `seed`; the
last `n_test = clip(round(test_percent/100 * n), 1, n - 1)` are the test set (all n when n == 1).
The test set depends only on (fold, seed, test_percent), so every budget of a seed is scored on the
same test windows.

**Budgets in labeled time** (`calibration_split`). The other repetitions form the label's
calibration pool, its windows in one order: repetitions in the shuffled order, windows in time
order inside each. Budget b % takes the first `k = clip(round(b/100 * n_pool), 1, n_pool)` windows
of each label's pool (none at 0 %): a contiguous stretch from the start of a repetition, then the
next repetition. Windows are equally spaced, so k is labeled time in units of the window stride;
budgets are nested (prefixes of one order) and at least one window per label. A budget below one
window per label selects that one window: `calibration_seconds` says how much labeled time a
selection really holds, and the report prints it beside each percentage.

**Reference windows** (`reference_split`): what the held-out subject's statistics (normalization,
noise floor, channel health) may be computed from under the strict protocol: its calibration
windows at b > 0, and at 0 % the windows budget `reference_percent` would calibrate with, used
without their labels (a warm-up: the subject performs the gesture set once before use). They are
never test windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

N_PSEUDO_REPS = 3  # pseudo-repetitions per (recording, label) when a dataset has no repetition ids
COLUMNS = ("dataset", "subject", "session", "label", "rep", "key", "start", "stop", "fs")
GUARD = -1  # unit of a held-out window in neither calibration nor test


@dataclass(frozen=True)
class Fold:
    """One held-out subject (or session, for single-subject datasets) of one dataset.

    `train_idx`/`heldout_idx`: row numbers in the windows table. `heldout_label`, `heldout_unit` and
    `heldout_start` are aligned with `heldout_idx`: the label, the repetition id (an integer unique
    within the fold; GUARD for guard windows) and the start sample of each held-out window.
    """

    dataset: str
    held_out: str
    train_idx: np.ndarray
    heldout_idx: np.ndarray
    heldout_label: np.ndarray
    heldout_unit: np.ndarray
    heldout_start: np.ndarray


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
    for name in ("label", "rep", "start", "stop"):
        out[name] = out[name].astype(np.int64)
    out["fs"] = out["fs"].astype(np.float64)
    return out


def _units(cols: dict[str, np.ndarray], idx: np.ndarray, gap_s: float | None) -> np.ndarray:
    """Repetition id of each row in idx, GUARD for guard windows (see the module docstring)."""
    key, label, rep = cols["key"][idx], cols["label"][idx], cols["rep"][idx]
    start, stop, fs = cols["start"][idx], cols["stop"][idx], cols["fs"][idx]
    # one integer per (key, label): recordings and labels are few, windows many
    _, pair = np.unique(np.char.add(np.char.add(key, "\0"), label.astype(str)), return_inverse=True)
    unit = np.full(idx.size, GUARD, dtype=np.int64)
    has_rep = rep >= 0
    if has_rep.any():  # (key, label, rep) -> an id; pseudo-repetitions get ids after them
        _, unit[has_rep] = np.unique(np.stack([pair[has_rep], rep[has_rep]]), axis=1, return_inverse=True)
    next_id = int(unit.max(initial=-1)) + 1
    for p in np.unique(pair[~has_rep]):
        members = np.flatnonzero((pair == p) & ~has_rep)
        first, last = start[members].min(), stop[members].max()
        gap = (stop[members] - start[members]).max() if gap_s is None else gap_s * fs[members[0]]
        cuts = first + (last - first) * np.arange(1, N_PSEUDO_REPS) / N_PSEUDO_REPS
        part = np.searchsorted(cuts, start[members], side="right")
        # a window must lie inside its part and keep gap/2 from every cut on either side
        low = np.concatenate([[-np.inf], cuts + gap / 2])[part]
        high = np.concatenate([cuts - gap / 2, [np.inf]])[part]
        inside = (start[members] >= low) & (stop[members] <= high)
        unit[members[inside]] = next_id + part[inside]
        next_id += N_PSEUDO_REPS
    return unit


def loso_folds(windows: Any, dataset: str, gap_s: float | None = None) -> list[Fold]:
    """Leave-one-subject-out folds of one dataset (leave-one-session-out if it has one subject).

    gap_s: the least distance between a calibration and a test window cut from the same segment
    (datasets without repetition ids); None = one window length.
    """
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
                          heldout_label=cols["label"][heldout], heldout_unit=_units(cols, heldout, gap_s),
                          heldout_start=cols["start"][heldout]))
    return folds


def subject_fold(windows: Any, dataset: str, subject: str, gap_s: float | None = None,
                 with_others: bool = True) -> Fold:
    """The fold that holds out one subject of a dataset for a personal decoder (`aemg finetune`): its labeled
    windows are the held-out rows (repetitions and guard windows as in `loso_folds`), the other subjects' of the
    dataset the train rows (none with `with_others` False, or when the subject is the only one)."""
    cols = _columns(windows)
    rows = np.flatnonzero((cols["dataset"] == dataset) & (cols["label"] >= 0))
    heldout = rows[cols["subject"][rows] == subject]
    if heldout.size == 0:
        raise ValueError(f"no labeled windows of subject {dataset}/{subject}")
    train = rows[cols["subject"][rows] != subject] if with_others else rows[:0]
    return Fold(dataset=dataset, held_out=subject, train_idx=train, heldout_idx=heldout,
                heldout_label=cols["label"][heldout], heldout_unit=_units(cols, heldout, gap_s),
                heldout_start=cols["start"][heldout])


def _label_pools(fold: Fold, seed: int, test_percent: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per label (sorted): (pool positions in calibration order, test positions), as positions in heldout_idx."""
    if not 0 < test_percent < 100:
        raise ValueError(f"test_percent must be in (0, 100), got {test_percent}")
    rng = np.random.default_rng(seed)
    out = []
    for lab in np.unique(fold.heldout_label):
        units = np.unique(fold.heldout_unit[(fold.heldout_label == lab) & (fold.heldout_unit != GUARD)])
        order = units[rng.permutation(units.size)]
        n = order.size
        n_test = n if n == 1 else int(np.clip(round(test_percent / 100 * n), 1, n - 1))
        test = np.flatnonzero(np.isin(fold.heldout_unit, order[n - n_test:]))
        pool = np.flatnonzero(np.isin(fold.heldout_unit, order[:n - n_test]))
        rank = {u: i for i, u in enumerate(order)}  # pool order: repetitions as shuffled, time inside each
        pool = pool[np.lexsort((fold.heldout_start[pool], [rank[u] for u in fold.heldout_unit[pool]]))]
        out.append((pool, test))
    return out


def calibration_split(fold: Fold, budget_percent: float, seed: int,
                      test_percent: float = 33.0) -> tuple[np.ndarray, np.ndarray]:
    """(calib_idx, test_idx): row numbers of the held-out windows used to calibrate / to score.

    See the module docstring for the rule; calibration and test never share a repetition.
    """
    if not 0 <= budget_percent <= 100:
        raise ValueError(f"budget_percent must be in [0, 100], got {budget_percent}")
    calib, test = [], []
    for pool, label_test in _label_pools(fold, seed, test_percent):
        k = int(np.clip(round(budget_percent / 100 * pool.size), 1, pool.size)) if budget_percent > 0 else 0
        calib.append(pool[:k])
        test.append(label_test)
    return np.sort(fold.heldout_idx[np.concatenate(calib)]), np.sort(fold.heldout_idx[np.concatenate(test)])


def reference_split(fold: Fold, budget_percent: float, seed: int, test_percent: float = 33.0,
                    reference_percent: float = 1.0) -> np.ndarray:
    """Row numbers of the windows the held-out subject's statistics may use at this budget (sorted)."""
    if not 0 < reference_percent <= 100:
        raise ValueError(f"reference_percent must be in (0, 100], got {reference_percent}")
    return calibration_split(fold, budget_percent or reference_percent, seed, test_percent)[0]


def calibration_seconds(start: np.ndarray, stop: np.ndarray, key: np.ndarray, label: np.ndarray,
                        fs: float) -> float:
    """Labeled time per class held by a set of equal-length windows: the union of their spans in seconds,
    averaged over the labels present (samples shared by overlapping windows count once)."""
    if start.size == 0:
        return 0.0
    key = np.asarray(key).astype(str)
    order = np.lexsort((start, key, label))
    start, stop, key, label = start[order], stop[order], key[order], label[order]
    next_start = np.append(start[1:], np.iinfo(np.int64).max)
    last_of_run = np.append((key[1:] != key[:-1]) | (label[1:] != label[:-1]), True)
    next_start[last_of_run] = np.iinfo(np.int64).max
    # sorted equal-length windows: each adds its samples up to where the next one starts
    covered = (np.minimum(stop, next_start) - start).sum()
    return float(covered) / fs / np.unique(label).size
