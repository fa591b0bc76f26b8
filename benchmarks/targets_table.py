"""Issue 14's targets, measured on one test evaluation: which are met, with the numbers behind each verdict.

    python benchmarks/targets_table.py TEST_RUN [TEST_RUN ...] [--lodo DATASET=LODO_RUN ...] [--details] [--out FILE]

TEST_RUN is an `aemg evaluate --role test` output holding aemg_finetune, aemg_probe, aemg_scratch and the baselines
on the same folds (benchmarks/recipe_test.sh writes one); several (other evaluation seeds of the same folds) are
pooled. Every number is over the held-out subjects (each subject's accuracy averaged over the evaluation seeds),
balanced accuracy:

- pretraining helps: aemg_finetune - aemg_scratch >= +0.03 at each of 1, 5 and 10 %, paired over the subjects of
  every dataset, Wilcoxon signed-rank p < 0.01;
- beats the field at 10 %: per dataset, aemg_finetune's mean >= the best baseline's mean on at least 4 of 6 datasets;
  at 0 %: aemg_finetune >= td_lda + 0.05 on at least 4 of 6;
- features that transfer frozen: aemg_probe's mean within 0.05 of aemg_finetune's at 100 %;
- unseen device (with --lodo): aemg_finetune pretrained without the dataset (LODO_RUN, same folds; repeat for other
  seeds) minus TEST_RUN's aemg_scratch, the first target's bar on each left-out dataset.

A target whose trials the runs do not hold yet (the baselines of a `PART=aemg` run, no --lodo) reads "not judged"; the
field targets are judged over the 6 datasets, so a partial run reads "missed" only once the datasets it lacks could
not reach the bar.

With --details, the numbers behind the verdicts follow: every method's mean level per budget, fine-tuned − scratch
per evaluation seed and per dataset, every dataset's fine-tuned, scratch and best baseline levels (naming the
baseline), and per left-out dataset the mean levels of fine-tuning pretrained without it, pretrained with its other
subjects (TEST_RUN's), scratch, TD+LDA and the best baseline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_table import BASELINES, mean_level, pooled, rows_of  # noqa: E402
from aemg_dist.evaluation.report import paired, per_subject  # noqa: E402

HELPS_BUDGETS = (1.0, 5.0, 10.0)
BUDGETS = (0.0, 1.0, 5.0, 10.0, 100.0)
HELPS_BY, HELPS_P = 0.03, 0.01
FIELD_DATASETS, N_DATASETS = 4, 6  # the field targets: at least 4 of the 6 shared datasets
ZERO_SHOT_MARGIN = 0.05
PROBE_WITHIN = 0.05


def _mean(cells: dict, method: str, dataset: str, budget: float) -> float:
    subjects = cells.get((method, dataset, budget))
    return float(np.mean(list(subjects.values()))) if subjects else float("nan")


def _best_baseline_name(cells: dict, dataset: str, budget: float) -> str | None:
    """The baseline with the highest mean on the dataset at the budget (None: no baseline ran there)."""
    return max((m for m in BASELINES if (m, dataset, budget) in cells), default=None,
               key=lambda m: _mean(cells, m, dataset, budget))


def _best_baseline(cells: dict, dataset: str, budget: float) -> float:
    best = _best_baseline_name(cells, dataset, budget)
    return _mean(cells, best, dataset, budget) if best else float("nan")


def helps(rows: list[dict], budgets: tuple[float, ...] = HELPS_BUDGETS) -> tuple[str, bool]:
    pairs = [pooled(rows, "aemg_finetune", "aemg_scratch", b) for b in budgets]
    text = " / ".join(f"{p['difference']:+.3f} ({p['wins']}/{p['n']}, p {p['p_value']:.2g})" if p["n"] else "–"
                      for p in pairs)
    met = all(p["n"] and p["difference"] >= HELPS_BY and p["p_value"] < HELPS_P for p in pairs)
    return f"{text} at {' / '.join(f'{b:g}' for b in budgets)} %", met


def per_dataset(cells: dict, budget: float, reference) -> list[tuple[str, float]]:
    """(dataset, aemg_finetune's mean minus reference(dataset)) for every dataset aemg_finetune was scored on."""
    datasets = sorted({d for (m, d, b) in cells if (m, b) == ("aemg_finetune", budget)})
    return [(d, _mean(cells, "aemg_finetune", d, budget) - reference(d)) for d in datasets]


def _datasets_cell(margins: list[tuple[str, float]], what: str) -> tuple[str, bool | None]:
    """The datasets where fine-tuned AEMG is ahead, and the verdict: None (not judged) while the datasets not measured
    yet (no trials of AEMG or of the reference: nan margins, or absent) could still decide it."""
    known = [(d, m) for d, m in margins if not np.isnan(m)]
    ahead, open_datasets = sum(m >= 0 for _, m in known), N_DATASETS - len(known)
    listed = ", ".join(f"{d} {m:+.3f}" for d, m in sorted(known, key=lambda x: -x[1]))
    text = f"{ahead} of {len(known)} ({what}: {listed})" if known else "no baseline trials in these runs"
    if open_datasets > 0 and known:
        text += f"; {open_datasets} of {N_DATASETS} datasets not measured"
    met = True if ahead >= FIELD_DATASETS else False if ahead + open_datasets < FIELD_DATASETS else None
    return text, met


def _budget_header(first: str) -> list[str]:
    """The head of a table with one column per budget of BUDGETS."""
    return [f"| {first} | " + " | ".join(f"{b:g} %" for b in BUDGETS) + " |", "|---" * (len(BUDGETS) + 1) + "|"]


def details(rows: list[dict], left_out: dict[str, list[dict]]) -> str:
    """Every method's level, fine-tuned − scratch per evaluation seed and per dataset, and the levels on every
    left-out dataset; `rows` are the test runs' trials, `left_out` each left-out dataset's aemg_finetune trials."""
    cells = per_subject(rows, "balanced_accuracy")
    lines = ["Mean balanced accuracy over the held-out subjects (each method's seeds averaged per subject):", "",
             *_budget_header("method")]
    for method in ("aemg_finetune", "aemg_probe", "aemg_scratch", *BASELINES):
        if any(m == method for m, _, _ in cells):
            lines.append(f"| {method} | " + " | ".join(f"{mean_level(cells, method, b):.3f}" for b in BUDGETS) + " |")
    lines += ["", "Fine-tuned − scratch per evaluation seed (subjects where pretraining helps):", "",
              *_budget_header("seed")]
    for seed in sorted({r["seed"] for r in rows if r["method"] == "aemg_scratch"}):
        pairs = [pooled([r for r in rows if r["seed"] == seed], "aemg_finetune", "aemg_scratch", b) for b in BUDGETS]
        text = " | ".join(f"{p['difference']:+.3f} ({p['wins']}/{p['n']})" for p in pairs)
        lines.append(f"| {seed} | {text} |")
    lines += ["", "Fine-tuned − scratch per dataset, seeds averaged per subject (wins / subjects, Wilcoxon p):", "",
              *_budget_header("dataset")]
    by_dataset: dict[str, dict[float, dict]] = {}
    for pair in paired(rows, "aemg_finetune", "aemg_scratch"):
        by_dataset.setdefault(pair["dataset"], {})[pair["budget"]] = pair
    for dataset, pairs in sorted(by_dataset.items(), key=lambda item: (item[0] == "all", item[0])):
        lines.append(f"| {dataset} | " + " | ".join(
            f"{pairs[b]['difference']:+.3f} ({pairs[b]['wins']}/{pairs[b]['n']}, p {pairs[b]['p_value']:.2g})"
            if b in pairs else "–"
            for b in BUDGETS) + " |")
    lines += ["", "Per dataset, mean balanced accuracy: fine-tuned / scratch / the best baseline (which):", "",
              *_budget_header("dataset")]
    for dataset in sorted({d for m, d, _ in cells if m == "aemg_finetune"}):
        levels = []
        for budget in BUDGETS:
            best = _best_baseline_name(cells, dataset, budget)
            levels.append(f"{_mean(cells, 'aemg_finetune', dataset, budget):.3f} / "
                          f"{_mean(cells, 'aemg_scratch', dataset, budget):.3f} / " +
                          (f"{_mean(cells, best, dataset, budget):.3f} ({best})" if best else "–"))
        lines.append(f"| {dataset} | " + " | ".join(levels) + " |")
    for dataset, tuned in sorted(left_out.items()):
        seeds = {r["seed"] for r in tuned}
        cells = per_subject([dict(r, method="aemg_finetune_lodo") for r in tuned] +
                            [r for r in rows if r["dataset"] == dataset and r["seed"] in seeds], "balanced_accuracy")
        lines += ["", f"{dataset}, mean balanced accuracy, evaluation seeds {sorted(seeds)}:", "",
                  *_budget_header("method")]
        for label, level in (
                (f"fine-tuned, pretrained without {dataset}", lambda b: _mean(cells, "aemg_finetune_lodo", dataset, b)),
                (f"fine-tuned, pretrained with {dataset}'s other subjects",
                 lambda b: _mean(cells, "aemg_finetune", dataset, b)),
                ("scratch", lambda b: _mean(cells, "aemg_scratch", dataset, b)),
                ("TD+LDA", lambda b: _mean(cells, "td_lda", dataset, b)),
                ("best baseline", lambda b: _best_baseline(cells, dataset, b))):
            values = [level(b) for b in BUDGETS]  # nan: no trials of that method (e.g. the AEMG part alone)
            lines.append(f"| {label} | " + " | ".join("–" if np.isnan(v) else f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def targets(test_runs: list[Path], lodo: dict[str, list[Path]], with_details: bool = False) -> str:
    """The targets table of the pooled test runs and LODO runs (`lodo`: left-out dataset -> its runs), followed by
    `details` when asked; each run's trials are read once."""
    rows = [row for run in test_runs for row in rows_of(run)]
    left_out = {dataset: [r for folder in folders for r in rows_of(folder) if r["method"] == "aemg_finetune"]
                for dataset, folders in lodo.items()}
    cells = per_subject(rows, "balanced_accuracy")
    subjects = len({(r["dataset"], r["subject"]) for r in rows if r["method"] == "aemg_finetune"})
    seeds = {group: sorted({r["seed"] for r in rows if (r["method"] in BASELINES) == (group == "baselines")})
             for group in ("AEMG", "baselines")}
    seeds_text = (f"evaluation seeds {seeds['AEMG']}" if seeds["AEMG"] == seeds["baselines"] or not seeds["baselines"]
                  else f"evaluation seeds {seeds['AEMG']} for AEMG, {seeds['baselines']} for the baselines")
    lines = [f"Test runs {', '.join(run.name for run in test_runs)}: {subjects} held-out subjects, {seeds_text}.", "",
             "| target | measured | met? |", "|---|---|---|"]

    def add(target: str, measured: str, met: bool | None) -> None:
        lines.append(f"| {target} | {measured} | {'not judged' if met is None else 'met' if met else 'missed'} |")

    add(f"fine-tuned − scratch ≥ +{HELPS_BY} at 1, 5 and 10 %, p < {HELPS_P}", *helps(rows))

    add(f"at 10 %, fine-tuned ≥ the best baseline on ≥ {FIELD_DATASETS} of 6 datasets",
        *_datasets_cell(per_dataset(cells, 10.0, lambda d: _best_baseline(cells, d, 10.0)),
                        "fine-tuned − best baseline"))
    add(f"at 0 %, fine-tuned ≥ TD+LDA + {ZERO_SHOT_MARGIN} on ≥ {FIELD_DATASETS} of 6",
        *_datasets_cell(per_dataset(cells, 0.0, lambda d: _mean(cells, "td_lda", d, 0.0) + ZERO_SHOT_MARGIN),
                        f"fine-tuned − (TD+LDA + {ZERO_SHOT_MARGIN})"))
    probe, tuned = mean_level(cells, "aemg_probe", 100.0), mean_level(cells, "aemg_finetune", 100.0)
    gap = probe - tuned
    add(f"probe within {PROBE_WITHIN} of fine-tuning at 100 %",
        "no probe or fine-tuning trials in these runs" if np.isnan(gap) else f"{probe:.3f} vs {tuned:.3f}: {gap:+.3f}",
        None if np.isnan(gap) else bool(gap >= -PROBE_WITHIN))
    if not left_out:
        add("leave-one-dataset-out keeps the first target", "not run", None)
    for dataset, tuned in sorted(left_out.items()):
        seeds = {r["seed"] for r in tuned}  # scratch at the same seeds
        scratch = [r for r in rows if r["method"] == "aemg_scratch" and r["dataset"] == dataset and r["seed"] in seeds]
        add(f"pretrained without {dataset}: the first target on {dataset}", *helps(tuned + scratch))
    if with_details:
        lines += ["", details(rows, left_out)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test_runs", type=Path, nargs="+",
                        help="`aemg evaluate --role test` outputs with every method (other seeds of the same folds)")
    parser.add_argument("--lodo", action="append", default=[], metavar="DATASET=LODO_RUN",
                        help="aemg_finetune pretrained without DATASET, on the same folds (repeat)")
    parser.add_argument("--details", action="store_true",
                        help="also the numbers behind the verdicts: per seed, per dataset, left-out datasets' levels")
    parser.add_argument("--out", type=Path, help="also write the output here")
    args = parser.parse_args()
    lodo: dict[str, list[Path]] = {}
    for item in args.lodo:
        dataset, folder = item.split("=", 1)
        lodo.setdefault(dataset, []).append(Path(folder))
    text = targets(args.test_runs, lodo, args.details)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
