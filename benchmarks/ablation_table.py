"""The ablation table of issue 14: one row per pretraining variant, scored on the same development folds.

    python benchmarks/ablation_table.py --baselines DEV_BASELINES NAME=DEV_RUN[:PRETRAIN_RUN] ... [--out table.md]

Each DEV_RUN is an `aemg evaluate` output holding aemg_finetune, aemg_probe and aemg_scratch on development
folds; DEV_BASELINES one holding the baselines on the same folds (same windows, budgets and seeds). Columns:

- pretrained - scratch at 1 % and at 10 %: aemg_finetune minus aemg_scratch in balanced accuracy, paired over the
  held-out subjects (datasets pooled, seeds averaged), with how many subjects pretraining helps;
- gap to the best baseline at 10 %: per dataset, aemg_finetune's mean minus the best baseline's mean, averaged
  over datasets, and on how many datasets aemg_finetune is at least the best baseline;
- probe - fine-tune at 100 %: aemg_probe minus aemg_finetune (how much of the fine-tuned accuracy the frozen
  features hold);
- pretraining cost: steps and wall seconds of the pretraining run (its metrics.csv), when given.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aemg_dist.evaluation.report import per_subject  # noqa: E402

BASELINES = ("td_lda", "cnn", "transformer", "simclr", "mae")


def rows_of(run: Path) -> list[dict]:
    return [r for line in (run / "trials.jsonl").read_text().splitlines() for r in json.loads(line)["trials"]]


def paired(cells: dict, a: str, b: str, budget: float) -> tuple[float, int, int]:
    """(mean of a - b over subjects of every dataset, subjects where a > b, subjects)."""
    diffs = []
    for (method, dataset, bb), subjects in cells.items():
        if method == a and bb == budget and (b, dataset, budget) in cells:
            other = cells[(b, dataset, budget)]
            diffs += [subjects[s] - other[s] for s in subjects if s in other]
    diffs = np.array(diffs)
    return (float(diffs.mean()) if diffs.size else float("nan")), int((diffs > 0).sum()), int(diffs.size)


def gap_to_best(cells: dict, budget: float) -> tuple[float, int, int]:
    """(mean over datasets of finetune - best baseline, datasets where finetune >= best, datasets)."""
    gaps = []
    for (method, dataset, b), subjects in cells.items():
        if method != "aemg_finetune" or b != budget:
            continue
        baselines = [np.mean(list(cells[(m, dataset, b)].values())) for m in BASELINES if (m, dataset, b) in cells]
        if baselines:
            gaps.append(np.mean(list(subjects.values())) - max(baselines))
    gaps = np.array(gaps)
    return (float(gaps.mean()) if gaps.size else float("nan")), int((gaps >= 0).sum()), int(gaps.size)


def pretraining_cost(run: Path | None) -> str:
    if run is None or not (run / "metrics.csv").is_file():
        return "–"
    with (run / "metrics.csv").open() as f:
        last = list(csv.DictReader(f))[-1]
    return f"{int(float(last['step']))} steps, {float(last['elapsed_s']) / 60:.1f} min"


def table(variants: list[tuple[str, Path, Path | None]], baselines: Path) -> str:
    base = rows_of(baselines)
    lines = ["| variant | pretrained − scratch, 1 % | pretrained − scratch, 10 % | gap to best baseline, 10 % "
             "(datasets ≥ best) | probe − fine-tune, 100 % | pretraining |", "|---|---|---|---|---|---|"]
    for name, run, pretrain_run in variants:
        cells = per_subject(rows_of(run) + base, "balanced_accuracy")
        one, ten = paired(cells, "aemg_finetune", "aemg_scratch", 1.0), paired(cells, "aemg_finetune", "aemg_scratch", 10.0)
        gap = gap_to_best(cells, 10.0)
        probe = paired(cells, "aemg_probe", "aemg_finetune", 100.0)
        lines.append(f"| {name} | {one[0]:+.3f} ({one[1]}/{one[2]}) | {ten[0]:+.3f} ({ten[1]}/{ten[2]}) | "
                     f"{gap[0]:+.3f} ({gap[1]}/{gap[2]}) | {probe[0]:+.3f} | {pretraining_cost(pretrain_run)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="NAME=DEV_RUN[:PRETRAIN_RUN]")
    parser.add_argument("--baselines", type=Path, required=True, help="the baselines' evaluation on the same folds")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    variants = []
    for spec in args.variants:
        name, _, paths = spec.partition("=")
        run, _, pretrain_run = paths.partition(":")
        variants.append((name, Path(run), Path(pretrain_run) if pretrain_run else None))
    text = table(variants, args.baselines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
