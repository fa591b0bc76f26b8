"""The ablation table of issue 14: one row per pretraining variant, scored on the same development folds.

    python benchmarks/ablation_table.py --baselines DEV_BASELINES[+RUN...] \\
        NAME=DEV_RUN[+RUN...][:PRETRAIN_RUN[:BASELINES]] ... [--out table.md]

Each DEV_RUN is an `aemg evaluate` output holding aemg_finetune, aemg_probe and aemg_scratch on development
folds; DEV_BASELINES one holding the baselines on the same folds (same windows and budgets; DEV_BASELINES+RUN@m:
each baseline from the run of its own source length, as for DEV_RUN), or the row's own
BASELINES (a calibration recipe is every method's: its row compares with baselines calibrated alike). DEV_RUN+RUN:
the methods RUN holds replace DEV_RUN's (a probe-only evaluation scored against an earlier run's fine-tuning);
RUN@m1,m2: only those methods of RUN (each arm from the run of its own recipe).
Columns:

- pretrained - scratch at 1 % and at 10 % (or the budgets of --budgets): aemg_finetune minus aemg_scratch in
  balanced accuracy, paired over the held-out subjects (datasets pooled, seeds averaged), with how many subjects
  pretraining helps and the Wilcoxon signed-rank p over those subjects;
- gap to the best baseline at 10 %: per dataset, aemg_finetune's mean minus the best baseline's mean, averaged
  over datasets, and on how many datasets aemg_finetune is at least the best baseline (each method averaged over
  its own seeds: the baselines may have run fewer);
- probe - fine-tune at 100 %: aemg_probe minus aemg_finetune (how much of the fine-tuned accuracy the frozen
  features hold);
- pretraining cost: steps and wall seconds of the pretraining run (its metrics.csv), when given.

With --levels a second table gives the levels behind the differences: aemg_finetune's and aemg_scratch's mean
balanced accuracy per budget and the median number of calibration steps each adapted for; with --probe-levels,
aemg_probe's and aemg_finetune's mean balanced accuracy per budget; with --source-fit, per dataset, how well the
fine-tuned and scratch source models fit the windows they were trained on beside their held-out accuracy at 0 %.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aemg_dist.evaluation.report import paired, per_subject  # noqa: E402

BASELINES = ("td_lda", "cnn", "transformer", "simclr", "mae")


def folder_spec(spec: Path) -> tuple[Path, str]:
    """FOLDER@m1,m2 -> (FOLDER, "m1,m2"); a plain FOLDER -> (FOLDER, "")."""
    folder, _, only = str(spec).partition("@")
    return Path(folder), only


def rows_of(*folders: Path) -> list[dict]:
    """The trials of evaluation folders, each one's methods replacing those of the folders before it. A folder named
    FOLDER@m1,m2 gives only those methods' trials (each arm of a variant from the run at its own recipe)."""
    rows: list[dict] = []
    for spec in folders:
        folder, only = folder_spec(spec)
        own = [r for line in (folder / "trials.jsonl").read_text().splitlines()
               for r in json.loads(line)["trials"] if not only or r["method"] in only.split(",")]
        methods = {r["method"] for r in own}
        rows = [r for r in rows if r["method"] not in methods] + own
    return rows


def pooled(rows: list[dict], a: str, b: str, budget: float) -> dict:
    """a vs b at `budget`, paired over the held-out subjects of every dataset (seeds averaged): the pooled row of
    `report.paired` (difference, wins, n, Wilcoxon p_value)."""
    pairs = [r for r in paired(rows, a, b) if r["budget"] == budget]
    return next((r for r in pairs if r["dataset"] == "all"), pairs[0] if pairs else
                {"difference": float("nan"), "wins": 0, "n": 0, "p_value": float("nan")})


def _cell(pair: dict) -> str:
    if not pair["n"]:
        return "–"  # a run without one of the two methods (a probe-only evaluation)
    return f"{pair['difference']:+.3f} ({pair['wins']}/{pair['n']}, p {pair['p_value']:.2f})"


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


Variant = tuple[str, list[Path], Path | None, Path | None]  # name, evaluation folders, pretraining run, baselines


def table(variants: list[Variant], baselines: list[Path],
          budgets: tuple[float, ...] = (1.0, 10.0)) -> str:
    head = "".join(f" pretrained − scratch, {b:g} % |" for b in budgets)
    lines = [f"| variant |{head} gap to best baseline, 10 % (datasets ≥ best) | probe − fine-tune, 100 % | pretraining |",
             "|---|" + "---|" * (len(budgets) + 3)]
    for name, run, pretrain_run, own_baselines in variants:
        compared = [own_baselines] if own_baselines else baselines
        present = [c for c in compared if (folder_spec(c)[0] / "trials.jsonl").is_file()]
        rows = rows_of(*run) + (rows_of(*present) if present else [])
        cells = "".join(f" {_cell(pooled(rows, 'aemg_finetune', 'aemg_scratch', b))} |" for b in budgets)
        gap = gap_to_best(per_subject(rows, "balanced_accuracy"), 10.0)
        tuned = any(r["method"] == "aemg_finetune" for r in rows)
        gap_cell = f"{gap[0]:+.3f} ({gap[1]}/{gap[2]})" if gap[2] else "– (baselines not run)" if tuned else "–"
        probe = pooled(rows, "aemg_probe", "aemg_finetune", 100.0)
        probe_cell = f"{probe['difference']:+.3f}" if probe["n"] else "–"
        lines.append(f"| {name} |{cells} {gap_cell} | {probe_cell} | "
                     f"{pretraining_cost(pretrain_run)} |")
    return "\n".join(lines)


def mean_level(cells: dict, method: str, budget: float) -> float:
    """The method's mean balanced accuracy at `budget` over the held-out subjects (seeds averaged); nan if not run."""
    values = [v for (m, _, b), subjects in cells.items() if (m, b) == (method, budget) for v in subjects.values()]
    return float(np.mean(values)) if values else float("nan")


def mean_levels(cells: dict, methods: tuple[str, ...], budget: float) -> str:
    """Each method's mean_level at `budget`, "a / b"; "–" for a method the run does not hold."""
    return " / ".join(_level_cell(mean_level(cells, m, budget)) for m in methods)


def _level_cell(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.3f}"


def levels(variants: list[Variant], budgets: tuple[float, ...]) -> str:
    """Fine-tuned and from-scratch balanced accuracy per budget (mean over the held-out subjects, seeds averaged) and
    the median calibration steps each adapted for (the trials' calib_steps; "–" where not recorded)."""
    methods = ("aemg_finetune", "aemg_scratch")
    head = "".join(f" {b:g} %: fine-tuned / scratch (steps) |" for b in budgets)
    lines = [f"| variant |{head} mean of these budgets: fine-tuned / scratch |", "|---|" + "---|" * (len(budgets) + 1)]
    for name, run, _, _ in variants:
        rows = rows_of(*run)
        cells = per_subject(rows, "balanced_accuracy")
        out = []
        for b in budgets:
            steps = [[r["calib_steps"] for r in rows if r["method"] == m and r["budget"] == b
                      and r.get("calib_steps") is not None] for m in methods]
            told = " / ".join(f"{np.median(s):.0f}" if s else "–" for s in steps)
            out.append(f" {mean_levels(cells, methods, b)} ({told}) |")
        # each method's level averaged over the budgets (a recipe chosen per method on development folds compares these)
        overall = (np.mean([mean_level(cells, m, b) for b in budgets]) for m in methods)
        lines.append(f"| {name} |" + "".join(out) + " " + " / ".join(map(_level_cell, overall)) + " |")
    return "\n".join(lines)


def probe_levels(variants: list[Variant], budgets: tuple[float, ...]) -> str:
    """The frozen probe's and fine-tuning's mean balanced accuracy per budget (held-out subjects, seeds averaged)."""
    head = "".join(f" {b:g} %: probe / fine-tuned |" for b in budgets)
    lines = [f"| variant |{head}", "|---|" + "---|" * len(budgets)]
    for name, run, _, _ in variants:
        cells = per_subject(rows_of(*run), "balanced_accuracy")
        lines.append(f"| {name} |" + "".join(f" {mean_levels(cells, ('aemg_probe', 'aemg_finetune'), b)} |"
                                             for b in budgets))
    return "\n".join(lines)


def source_fit(variants: list[Variant]) -> str:
    """Per variant and dataset: how well the source models of aemg_finetune and aemg_scratch fit the other subjects'
    windows they were trained on (the trials' source_accuracy, one per fold) beside their balanced accuracy on the
    held-out subjects at 0 % (the same models, no calibration): a pretrained model below scratch on both underfits the
    source; level on the source and below on the held-out subjects, it transfers worse. Any other method the run
    holds gets its source fit in the last column."""
    arms = ("aemg_finetune", "aemg_scratch")
    lines = ["| variant | dataset | source fit: fine-tuned / scratch | held-out at 0 %: fine-tuned / scratch | "
             "source fit, other methods |", "|---|---|---|---|---|"]

    def mean_fit(rows: list[dict], method: str) -> str:
        fit = {(r["dataset"], r["subject"]): r["source_accuracy"] for r in rows if r["method"] == method}
        return f"{np.mean(list(fit.values())):.3f}" if fit else "–"

    for name, run, _, _ in variants:
        rows = [r for r in rows_of(*run) if r.get("source_accuracy") is not None]
        if not rows:  # evaluated before the trials recorded it
            continue
        others = sorted({r["method"] for r in rows} - set(arms))
        for dataset in sorted({r["dataset"] for r in rows}) + ["all"]:
            chosen = [r for r in rows if dataset in ("all", r["dataset"])]
            folds = len({(r["dataset"], r["subject"]) for r in chosen})
            cells = per_subject([r for r in chosen if r["budget"] == 0], "balanced_accuracy")
            lines.append(f"| {name} | {dataset} (folds: {folds}) | {' / '.join(mean_fit(chosen, m) for m in arms)} | "
                         f"{mean_levels(cells, arms, 0.0)} | "
                         f"{', '.join(f'{m} {mean_fit(chosen, m)}' for m in others) or '–'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="NAME=DEV_RUN[+RUN...][:PRETRAIN_RUN[:BASELINES]]")
    parser.add_argument("--baselines", required=True,
                        help="the baselines' evaluation on the same folds: FOLDER[+FOLDER[@methods]...]")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--budgets", default="1,10", help="budgets (%%) of the pretrained - scratch columns")
    parser.add_argument("--levels", action="store_true",
                        help="also print fine-tuned and scratch accuracy per budget and their median calibration steps")
    parser.add_argument("--probe-levels", action="store_true",
                        help="also print the frozen probe's and fine-tuning's accuracy per budget")
    parser.add_argument("--source-fit", action="store_true",
                        help="also print, per dataset, how well the fine-tuned and scratch source models fit the other "
                             "subjects' windows beside their accuracy on the held-out subjects at 0 %%")
    args = parser.parse_args()
    variants = []
    for spec in args.variants:
        name, _, paths = spec.partition("=")
        run, pretrain_run, own_baselines = (paths.split(":") + ["", ""])[:3]
        folders = [Path(folder) for folder in run.split("+")]
        variants.append((name, folders, Path(pretrain_run) if pretrain_run else None,
                         Path(own_baselines) if own_baselines else None))
    budgets = tuple(float(b) for b in args.budgets.split(","))
    text = table(variants, [Path(folder) for folder in args.baselines.split("+")], budgets)
    if args.levels:
        text += "\n\n" + levels(variants, budgets)
    if args.probe_levels:
        text += "\n\n" + probe_levels(variants, budgets)
    if args.source_fit:
        text += "\n\n" + source_fit(variants)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
