"""Aggregates of sweeps and scaling runs recomputed from their per-trial rows, in plain Python.

Both write every evaluation trial's rows to OUT/trials/<configuration>-<dataset>-<fold>-b<budget>.json before
anything is aggregated. These helpers read those files (not summary.csv, which the same report code writes, rounded)
and recompute what `aggregate.csv` (sweep_report) and `downstream.csv` (scaling) should hold, without the project's
aggregation code: per subject the mean over seeds, then per cell the mean, sample std, a 95 % t-interval clipped to
[0, 1] (nan under two subjects) and n; scaling's downstream accuracy averages the datasets' means.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from scipy.stats import t as student_t

CSV_DIGITS = 5e-5  # aggregate.csv writes 4 decimals


def trial_rows(out: Path) -> list[dict[str, Any]]:
    """Every trial row, with the configuration read back from its file's name."""
    rows = []
    for path in sorted((out / "trials").glob("*.json")):
        mine = json.loads(path.read_text())
        for r in mine:
            suffix = f"-{r['dataset']}-{r['subject']}-b{r['budget']:g}"
            assert path.stem.endswith(suffix), (path.name, suffix)
            rows.append({**r, "configuration": path.stem[:-len(suffix)]})
    assert rows, f"no trial rows under {out / 'trials'}"
    return rows


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize(values: list[float]) -> dict[str, float]:
    """mean, std (ddof 1; 0 for one value), the clipped 95 % t-interval and n of one cell's subject means."""
    n, mean = len(values), _mean(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = student_t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "std": std, "ci_low": max(0.0, mean - half) if n > 1 else math.nan,
            "ci_high": min(1.0, mean + half) if n > 1 else math.nan, "n": n}


def subject_means(rows: list[dict[str, Any]], metric: str, *keys: str) -> dict[tuple, dict[str, float]]:
    """{(row[k] for k in keys): {subject: metric averaged over seeds}}."""
    values: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        cell = tuple(float(r[k]) if k == "budget" else r[k] for k in keys)
        values.setdefault(cell, {}).setdefault(r["subject"], []).append(float(r[metric]))
    return {cell: {s: _mean(v) for s, v in subjects.items()} for cell, subjects in values.items()}


def expected_sweep_cells(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, float]]:
    """aggregate.csv's cells: {(configuration, role, method, dataset, budget, metric): summary}."""
    cells = {}
    for metric in ("balanced_accuracy", "macro_f1"):
        keys = ("configuration", "role", "method", "dataset", "budget")
        for cell, subjects in subject_means(rows, metric, *keys).items():
            cells[(*cell, metric)] = summarize(list(subjects.values()))
    return cells


def check_sweep_aggregate(out: Path) -> int:
    """aggregate.csv equals the recomputation from the trial rows, cell for cell; returns the number of cells."""
    expected = expected_sweep_cells(trial_rows(out))
    with (out / "aggregate.csv").open(newline="") as f:
        written = {(c["configuration"], c["role"], c["method"], c["dataset"], float(c["budget"]), c["metric"]): c
                   for c in csv.DictReader(f)}
    assert set(written) == set(expected)
    for cell, want in expected.items():
        got = written[cell]
        assert int(got["n"]) == want["n"], cell
        for name in ("mean", "std", "ci_low", "ci_high"):
            value = float(got[name])
            assert (math.isnan(value) and math.isnan(want[name])) or abs(value - want[name]) <= CSV_DIGITS, \
                (cell, name, value, want[name])
    return len(expected)


def check_scaling_downstream(out: Path) -> int:
    """downstream.csv: per run x method x budget, the mean over datasets of each dataset's mean over subjects
    (seeds averaged first), next to the run's own row of runs.csv; returns the number of rows."""
    rows = trial_rows(out)
    per_dataset = {cell: _mean(list(subjects.values())) for cell, subjects in
                   subject_means(rows, "balanced_accuracy", "configuration", "method", "budget", "dataset").items()}
    expected: dict[tuple, list[float]] = {}
    for (run, method, budget, _), value in per_dataset.items():
        expected.setdefault((run, method, budget), []).append(value)
    with (out / "runs.csv").open(newline="") as f:
        runs = {r["run"]: r for r in csv.DictReader(f)}
    with (out / "downstream.csv").open(newline="") as f:
        written = list(csv.DictReader(f))
    assert sorted((r["run"], r["method"], float(r["budget"])) for r in written) == sorted(expected)
    for r in written:
        means = expected[(r["run"], r["method"], float(r["budget"]))]
        assert int(r["datasets"]) == len(means)
        assert math.isclose(float(r["balanced_accuracy"]), _mean(means), rel_tol=1e-9, abs_tol=1e-12), r
        for column in ("size", "steps", "seed", "N", "D", "flops", "loss"):
            assert r[column] == runs[r["run"]][column], (r["run"], column)
    return len(written)
