"""benchmarks/ablation_table.py: the source-fit table that tells underfitting the source from transferring worse;
benchmarks/source_length.py: each method's source length chosen by its mean over the budgets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ablation_table import levels, source_fit, table  # noqa: E402
from source_length import by_length, markdown, parts_of  # noqa: E402


def _trial(method: str, dataset: str, subject: str, budget: float, accuracy: float, source: float) -> dict:
    return {"method": method, "dataset": dataset, "subject": subject, "budget": budget, "seed": 0,
            "balanced_accuracy": accuracy, "source_accuracy": source}


def _folder(tmp_path: Path, trials: list[dict], name: str = "dev") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "trials.jsonl").write_text("\n".join(json.dumps({"trials": [t]}) for t in trials) + "\n")
    return folder


def test_levels_give_each_arm_per_budget_and_its_mean_over_the_budgets(tmp_path):
    # subject S0 at 0.5 / 0.7, S1 at 0.7 / 0.9 for fine-tuned at 1 / 10 %; scratch 0.1 lower everywhere
    trials = [_trial(method, "alpha", subject, budget, level + offset - shift, 0.9)
              for method, shift in (("aemg_finetune", 0.0), ("aemg_scratch", 0.1))
              for subject, level in (("S0", 0.5), ("S1", 0.7)) for budget, offset in ((1.0, 0.0), (10.0, 0.2))]
    folder = _folder(tmp_path, trials)
    row = levels([("v", [folder], None, None)], (1.0, 10.0)).splitlines()[-1]
    assert [c.strip() for c in row.split("|")[2:5]] == ["0.600 / 0.500 (– / –)", "0.800 / 0.700 (– / –)",
                                                       "0.700 / 0.600"]
    # FOLDER@method keeps that method's trials only
    row = levels([("v", [Path(f"{folder}@aemg_scratch")], None, None)], (1.0,)).splitlines()[-1]
    assert [c.strip() for c in row.split("|")[2:4]] == ["– / 0.500 (– / –)", "– / 0.500"]


def test_source_fit_is_averaged_per_fold_beside_the_zero_budget_accuracy(tmp_path):
    trials = []
    for dataset, subjects, fit, heldout in (("alpha", ("S0", "S1"), (0.80, 0.95), (0.50, 0.60)),
                                            ("beta", ("S0",), (0.99, 0.97), (0.90, 0.85))):
        for i, subject in enumerate(subjects):
            for method, source, zero in zip(("aemg_finetune", "aemg_scratch"), fit, heldout):
                # one fold's trials all carry its source fit; only the 0 % trial's held-out accuracy is read
                trials += [_trial(method, dataset, subject, 0.0, zero + i / 10, source - i / 100),
                           _trial(method, dataset, subject, 10.0, 0.99, source - i / 100)]
    trials.append(_trial("cnn", "alpha", "S0", 0.0, 0.1, 0.1))  # another method: its source fit apart
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:6]]
            for line in source_fit([("v", [_folder(tmp_path, trials)], None, None)]).splitlines()[2:]}
    assert rows["alpha (folds: 2)"] == ["0.795 / 0.945", "0.550 / 0.650", "cnn 0.100"]
    assert rows["beta (folds: 1)"] == ["0.990 / 0.970", "0.900 / 0.850", "cnn –"]
    fine, scratch = (float(v) for v in rows["all (folds: 3)"][0].split(" / "))
    assert (fine, scratch) == pytest.approx(((0.80 + 0.79 + 0.99) / 3, (0.95 + 0.94 + 0.97) / 3), abs=1e-3)


def test_each_method_takes_the_source_length_with_the_best_mean_over_the_budgets(tmp_path):
    from ablation_table import rows_of

    def run(steps: int, levels: dict[str, tuple[float, float]], part: str = "") -> Path:
        # per method its accuracy at 0 and 10 % (subjects S0 at it, S1 0.1 above); td_lda has no source length
        trials = [{**_trial(method, "alpha", subject, budget, level + shift, 0.8 + steps / 1e5),
                   "source_steps": steps} for method, pair in levels.items() for budget, level in zip((0.0, 10.0), pair)
                  for subject, shift in (("S0", 0.0), ("S1", 0.1))]
        trials.append({**_trial("td_lda", "alpha", "S0", 0.0, 0.9, 0.9), "source_steps": None})
        return _folder(tmp_path, trials, f"base{steps}{part}")

    # the 1,000-step length run in two parts (cnn apart from mae and simclr) reads as one run
    runs = {300: rows_of(run(300, {"cnn": (0.5, 0.7), "mae": (0.4, 0.6), "simclr": (0.5, 0.5)})),
            1000: parts_of([run(1000, {"cnn": (0.6, 0.7)}, "a"),
                            run(1000, {"mae": (0.3, 0.6), "simclr": (0.4, 0.6)}, "b")])}
    with pytest.raises(ValueError, match="trials of cnn that another folder of its length has too"):
        parts_of([tmp_path / "base1000a", run(1000, {"cnn": (0.6, 0.7)}, "c")])
    table = by_length(runs, (0.0, 10.0))
    assert set(table) == {"cnn", "mae", "simclr"}  # td_lda trains nothing on the source subjects
    assert table["cnn"][1000]["levels"] == pytest.approx([0.65, 0.75])
    assert table["cnn"][1000]["mean"] == pytest.approx(0.70) and table["cnn"][300]["mean"] == pytest.approx(0.65)
    assert table["mae"][300]["fit"] == pytest.approx(0.803)
    text = markdown(table, (0.0, 10.0))
    # cnn prefers 1000, mae 300; simclr ties (0.55 both) and takes the shorter
    assert text.splitlines()[-1] == ("chosen: train.source_steps.cnn=1000 train.source_steps.mae=300 "
                                     "train.source_steps.simclr=300")
    assert "| cnn | 1000 | 0.650 | 0.750 | **0.700** | 0.810 |" in text
    # a folder whose trials trained another length than its label is refused
    with pytest.raises(ValueError, match="labelled 3000 trained cnn for \\[1000\\]"):
        by_length({3000: runs[1000]}, (0.0,))


def test_the_gap_to_the_best_baseline_takes_each_baseline_from_the_folder_of_its_own_length(tmp_path):
    arms = _folder(tmp_path, [_trial(m, "alpha", "S0", 10.0, level, 0.9)
                              for m, level in (("aemg_finetune", 0.75), ("aemg_scratch", 0.7))], "arms")
    short = _folder(tmp_path, [_trial("cnn", "alpha", "S0", 10.0, 0.8, 0.9),
                               _trial("simclr", "alpha", "S0", 10.0, 0.5, 0.9)], "base300")
    long = _folder(tmp_path, [_trial("cnn", "alpha", "S0", 10.0, 0.6, 0.9),
                              _trial("simclr", "alpha", "S0", 10.0, 0.7, 0.9)], "base1000")

    def gap(baselines: list[Path]) -> str:
        return table([("v", [arms], None, None)], baselines, (10.0,)).splitlines()[-1].split("|")[3].strip()

    assert gap([long]) == "+0.050 (1/1)"  # simclr 0.7 is the best
    assert gap([long, Path(f"{short}@cnn")]) == "-0.050 (0/1)"  # the cnn of the shorter run (0.8) replaces it
    assert gap([short]) == "-0.050 (0/1)"
    assert gap([tmp_path / "not-run"]) == "– (baselines not run)"
