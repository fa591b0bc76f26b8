"""Sweep and scaling aggregates against a plain-Python recomputation (tests/aggregates.py) on rows with several
subjects, seeds, datasets, roles and configurations, where std, intervals and the per-dataset weighting matter (the
sweep and scaling tests check the files they write the same way, on their own trial rows)."""

from __future__ import annotations

import math
import random

import pytest

from aggregates import expected_sweep_cells, subject_means
from tuning.scaling import downstream_rows
from tuning.trials import Configuration
from tuning.sweep_report import aggregate_cells

CONFIGURATIONS = [Configuration(f"codebook_size-{k}", {"codebook_size": k}) for k in (32, 64)]


def _rows() -> list[dict]:
    """Trial rows: 2 configurations x 2 datasets (3 and 5 subjects, so per-dataset means differ from pooled ones) x
    2 methods x 2 budgets x 2 seeds, random accuracies; the first subjects of each dataset are development."""
    draw = random.Random(0)
    rows = []
    for configuration in CONFIGURATIONS:
        for dataset, n_subjects in (("a", 3), ("b", 5)):
            for s in range(n_subjects):
                for method in ("aemg_finetune", "td_lda"):
                    for budget in (0.0, 10.0):
                        for seed in (0, 1):
                            rows.append({"configuration": configuration.name, "dataset": dataset, "subject": f"s{s}",
                                         "role": "development" if s < 2 else "test", "method": method,
                                         "budget": budget, "seed": seed, "balanced_accuracy": draw.random(),
                                         "macro_f1": draw.random()})
    return rows


def test_sweep_cells_equal_the_recomputation():
    rows = _rows()
    expected = expected_sweep_cells(rows)
    cells = aggregate_cells(rows, CONFIGURATIONS)
    assert len(cells) == len(expected) == 2 * 2 * 2 * 2 * 2 * 2  # configurations x roles x methods x datasets x ...
    assert {c["n"] for c in cells} == {1, 2, 3}  # development: 2 subjects per dataset; test: 1 and 3
    for c in cells:
        want = expected[(c["configuration"], c["role"], c["method"], c["dataset"], c["budget"], c["metric"])]
        for name in ("mean", "std", "ci_low", "ci_high", "n"):
            assert (math.isnan(c[name]) and math.isnan(want[name])) or c[name] == pytest.approx(want[name]), name


def test_scaling_downstream_weighs_each_dataset_the_same():
    rows = [{**r, "role": ""} for r in _rows()]
    table = [{"run": c.name, "size": "d16", "steps": 4, "seed": 0, "N": 1.0, "D": 2.0, "flops": 3.0, "loss": 4.0}
             for c in CONFIGURATIONS]
    written = downstream_rows(table, rows, CONFIGURATIONS)
    per_dataset = {cell: sum(s.values()) / len(s) for cell, s in
                   subject_means(rows, "balanced_accuracy", "configuration", "method", "budget", "dataset").items()}
    assert len(written) == 2 * 2 * 2
    for r in written:
        means = [v for (run, m, b, _), v in per_dataset.items() if (run, m, b) == (r["run"], r["method"], r["budget"])]
        assert r["datasets"] == len(means) == 2
        assert r["balanced_accuracy"] == pytest.approx(sum(means) / 2)
        pooled = [x["balanced_accuracy"] for x in rows if (x["configuration"], x["method"], x["budget"]) ==
                  (r["run"], r["method"], r["budget"])]
        assert r["balanced_accuracy"] != pytest.approx(sum(pooled) / len(pooled))  # not the pooled mean
