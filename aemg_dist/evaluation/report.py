"""Results of an evaluation: summary.csv, report.md and plots.

    summary.csv          one row per trial: method,dataset,subject,budget,seed,balanced_accuracy,
                         macro_f1,n_train,n_test (DESIGN.md), then n_calib, calibration seconds per
                         class, pretraining, normalization, role, fold seconds
    report.md            the protocol (normalization strict or transductive, which folds: development
                         or test subjects); mean +- std and a 95 % t-interval over held-out subjects
                         (each subject's seeds averaged first) per method x dataset x budget, for
                         balanced accuracy and macro-F1; calibration windows and labeled seconds per
                         class per budget; paired tables (Wilcoxon signed-rank over held-out subjects,
                         wins) of AEMG fine-tuned against the same architecture from scratch and against
                         every baseline, per dataset and budget and pooled over datasets; time per fold
    low_label.png        balanced accuracy vs calibration budget, one line per method, one panel per dataset
    confusion_<dataset>.png   summed confusion matrices (rows = truth, normalized) at the lowest and
                         highest budget for every method
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from aemg_dist.evaluation.methods import AEMG_METHODS

SUMMARY_COLUMNS = ("method", "dataset", "subject", "budget", "seed", "balanced_accuracy", "macro_f1", "n_train",
                   "n_test", "n_calib", "calib_seconds_per_class", "pretraining", "normalization", "role",
                   "fold_seconds")
PRIMARY = "aemg_finetune"  # the AEMG method tested against the best baseline (aemg_probe if it is absent)
SCRATCH = "aemg_scratch"  # the same architecture from random weights


def per_subject(rows: list[dict[str, Any]], metric: str) -> dict[tuple[str, str, float], dict[str, float]]:
    """{(method, dataset, budget): {subject: metric averaged over seeds}}."""
    sums: dict[tuple[str, str, float], dict[str, list[float]]] = {}
    for r in rows:
        sums.setdefault((r["method"], r["dataset"], float(r["budget"])), {}).setdefault(r["subject"], []).append(
            float(r[metric]))
    return {cell: {s: float(np.mean(v)) for s, v in subjects.items()} for cell, subjects in sums.items()}


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided t confidence interval of the mean (nan with fewer than two values)."""
    from scipy import stats

    if values.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


def aggregate(rows: list[dict[str, Any]], metric: str = "balanced_accuracy") -> list[dict[str, Any]]:
    """Mean, std, 95 % t-interval (clipped to [0, 1]) and count over held-out subjects per (method, dataset, budget)."""
    out = []
    for (method, dataset, budget), subjects in sorted(per_subject(rows, metric).items()):
        values = np.array(list(subjects.values()))
        low, high = np.clip(t_interval(values), 0.0, 1.0)  # accuracies: an interval over few subjects can leave [0, 1]
        out.append({"method": method, "dataset": dataset, "budget": budget, "mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if values.size > 1 else 0.0, "n": int(values.size),
                    "ci_low": float(low), "ci_high": float(high)})
    return out


def _wilcoxon(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import wilcoxon

    return float(wilcoxon(a, b).pvalue) if a.size and np.any(a != b) else float("nan")


def _pair(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, Any]:
    common = sorted(set(ours) & set(theirs))
    a, b = np.array([ours[s] for s in common]), np.array([theirs[s] for s in common])
    nan = float("nan")
    return {"mean": float(a.mean()) if a.size else nan, "versus_mean": float(b.mean()) if b.size else nan,
            "difference": float((a - b).mean()) if a.size else nan, "wins": int((a > b).sum()),
            "ties": int((a == b).sum()), "n": len(common), "p_value": _wilcoxon(a, b)}


def paired(rows: list[dict[str, Any]], ours: str, theirs: str, metric: str = "balanced_accuracy") -> list[dict[str, Any]]:
    """`ours` vs `theirs`, paired over held-out subjects (seeds averaged): one row per (dataset, budget), then one
    per budget pooled over every dataset's subjects (dataset "all"). Wilcoxon signed-rank p; wins = ours higher."""
    cells = per_subject(rows, metric)
    out, pooled = [], {}
    for (method, dataset, budget) in sorted(c for c in cells if c[0] == ours):
        if (theirs, dataset, budget) not in cells:
            continue
        mine, other = cells[(ours, dataset, budget)], cells[(theirs, dataset, budget)]
        out.append({"dataset": dataset, "budget": budget, "method": ours, "versus": theirs, **_pair(mine, other)})
        a, b = pooled.setdefault(budget, ({}, {}))
        a.update({f"{dataset}/{k}": v for k, v in mine.items()})
        b.update({f"{dataset}/{k}": v for k, v in other.items()})
    if len({r["dataset"] for r in out}) > 1:
        out += [{"dataset": "all", "budget": budget, "method": ours, "versus": theirs, **_pair(a, b)}
                for budget, (a, b) in sorted(pooled.items())]
    return out


def paired_tests(rows: list[dict[str, Any]], metric: str = "balanced_accuracy") -> list[dict[str, Any]]:
    """Per (dataset, budget): AEMG vs the baseline with the best mean, Wilcoxon signed-rank over subjects."""
    cells = per_subject(rows, metric)
    methods = {m for m, _, _ in cells}
    primary = PRIMARY if PRIMARY in methods else next((m for m in AEMG_METHODS if m in methods), None)
    if primary is None:
        return []
    tests = []
    for (method, dataset, budget) in sorted(c for c in cells if c[0] == primary):
        baselines = {m: cells[(m, dataset, budget)] for m in methods - set(AEMG_METHODS) if (m, dataset, budget) in cells}
        if not baselines:
            continue
        best = max(baselines, key=lambda m: np.mean(list(baselines[m].values())))
        pair = _pair(cells[(primary, dataset, budget)], baselines[best])
        tests.append({"dataset": dataset, "budget": budget, "aemg": primary, "best_baseline": best,
                      "aemg_mean": pair["mean"], "baseline_mean": pair["versus_mean"], "difference": pair["difference"],
                      "wins": pair["wins"], "n": pair["n"], "p_value": pair["p_value"]})
    return tests


def paired_matrix(tests: list[dict[str, Any]]) -> str:
    """`paired` rows as a dataset x budget table; each cell: difference (wins/n, Wilcoxon p)."""
    budgets = sorted({t["budget"] for t in tests})
    cells = {(t["dataset"], t["budget"]): t for t in tests}
    datasets = sorted({t["dataset"] for t in tests} - {"all"}) + (["all"] if ("all", budgets[0]) in cells else [])
    lines = ["| dataset | " + " | ".join(map(budget_label, budgets)) + " |", "|---|" + "---|" * len(budgets)]
    for dataset in datasets:
        row = []
        for b in budgets:
            t = cells.get((dataset, b))
            row.append(f"{t['difference']:+.3f} ({t['wins']}/{t['n']}, p={t['p_value']:.2g})" if t else "–")
        lines.append(f"| {'**all**' if dataset == 'all' else dataset} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_paired(tests: list[dict[str, Any]], path: Path) -> Path:
    columns = ("method", "versus", "dataset", "budget", "mean", "versus_mean", "difference", "wins", "ties", "n",
               "p_value")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for t in tests:
            writer.writerow({k: f"{t[k]:.4g}" if isinstance(t[k], float) and k != "budget" else t[k] for k in columns})
    return path


def write_summary(rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in sorted(rows, key=lambda r: (r["method"], r["dataset"], r["subject"], r["budget"], r["seed"])):
            writer.writerow({k: f"{r[k]:.4f}" if isinstance(r.get(k), float) and k != "budget" else r.get(k, "")
                             for k in SUMMARY_COLUMNS})
    return path


def budget_label(b: float) -> str:
    """A calibration budget as the tables and plots show it."""
    return f"{b:g} %"


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    """Method x budget table per dataset: mean ± std [95 % CI] over held-out subjects."""
    cells = {(a["method"], a["dataset"], a["budget"]): a for a in aggregate(rows, metric)}
    sessions = {r["dataset"] for r in rows if r.get("held_out_kind") == "session"}
    budgets = sorted({b for _, _, b in cells})
    lines = []
    for dataset in sorted({d for _, d, _ in cells}):
        methods = sorted({m for m, d, _ in cells if d == dataset}, key=lambda m: (m not in AEMG_METHODS, m))
        best = {b: max((cells[(m, dataset, b)]["mean"] for m in methods if (m, dataset, b) in cells)) for b in budgets}
        n = max(cells[(m, dataset, b)]["n"] for m in methods for b in budgets if (m, dataset, b) in cells)
        unit = "sessions of its one subject" if dataset in sessions else "subjects"
        lines += [f"\n**{dataset}** ({n} held-out {unit})\n", "| method | " + " | ".join(map(budget_label, budgets)) + " |",
                  "|---|" + "---|" * len(budgets)]
        for m in methods:
            row = []
            for b in budgets:
                c = cells.get((m, dataset, b))
                text = f"{c['mean']:.3f} ± {c['std']:.3f}" if c else "–"
                if c and c["n"] > 1:
                    text += f" [{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
                row.append(f"**{text}**" if c and c["mean"] == best[b] else text)
            lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def calibration_table(rows: list[dict[str, Any]]) -> str:
    """Per dataset and budget: calibration windows and labeled seconds per class (means over folds and seeds)."""
    counts: dict[tuple[str, float], list[tuple[int, float]]] = {}
    for r in rows:
        counts.setdefault((r["dataset"], float(r["budget"])), []).append(
            (int(r["n_calib"]), float(r.get("calib_seconds_per_class", float("nan")))))
    budgets = sorted({b for _, b in counts})
    lines = ["| dataset | " + " | ".join(map(budget_label, budgets)) + " |", "|---|" + "---|" * len(budgets)]
    for dataset in sorted({d for d, _ in counts}):
        cells = []
        for b in budgets:
            values = np.array(counts.get((dataset, b), []), dtype=float).reshape(-1, 2)
            cells.append(f"{values[:, 0].mean():.0f} ({values[:, 1].mean():.1f} s)" if values.size else "–")
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fold_times(rows: list[dict[str, Any]]) -> str:
    """Wall time of a fold (every method, budget and seed) per dataset: mean, max and total in minutes."""
    seconds: dict[str, dict[str, float]] = {}
    for r in rows:
        if "fold_seconds" in r:
            seconds.setdefault(r["dataset"], {})[r["subject"]] = float(r["fold_seconds"])
    lines = ["| dataset | folds | mean min / fold | max min / fold | total min |", "|---|---|---|---|---|"]
    for dataset, folds in sorted(seconds.items()):
        v = np.array(list(folds.values())) / 60
        lines.append(f"| {dataset} | {v.size} | {v.mean():.1f} | {v.max():.1f} | {v.sum():.0f} |")
    return "\n".join(lines)


def _protocol(rows: list[dict[str, Any]], cfg: Any) -> list[str]:
    """What was measured: folds, budgets, normalization, which subjects."""
    normalization = getattr(cfg, "normalization", "transductive")
    if normalization == "strict":
        stats = (f"**Normalization: strict.** A held-out subject's statistics (per-channel median/MAD, the event "
                 f"detector's noise floor, usable channels) come only from its reference windows: the calibration "
                 f"windows at each budget, and at 0 % the windows of the {cfg.reference_percent:g} % budget used "
                 "without labels (a warm-up). Its test windows reach no statistic of any method.")
    else:
        stats = ("**Normalization: TRANSDUCTIVE.** The held-out subject keeps the corpus's whole-recording statistics "
                 "(normalization, noise floor), which include its test windows: 0 % is unlabeled test-time "
                 "adaptation, not zero-shot. For sensitivity analysis only.")
    roles = sorted({r.get("role", "") for r in rows} - {""})
    subjects = (f"Folds: {' and '.join(roles)} subjects of `{cfg.splits}`" if roles else
                "Folds: every held-out subject (no development/test split)")
    if roles == ["test"]:
        subjects += "; every choice was made on the development subjects."
    elif "development" in roles:
        subjects += " (development folds are for choices, not for reporting)."
    return [
        f"Protocol: {cfg.protocol} (leave-one-subject-out within each dataset; leave-one-session-out for a "
        f"single-subject dataset). Calibration budgets {', '.join(map(budget_label, cfg.budgets))} of the held-out "
        f"subject's calibration pool in labeled time (contiguous windows inside repetitions, at least one per label, "
        f"nested); every budget of a seed is scored on the same test repetitions ({cfg.test_percent:g} % per label). "
        f"Seeds: {list(cfg.seeds)}. Windows: {cfg.windows.length_s:g} s every {cfg.windows.stride_s:g} s, "
        f"{cfg.windows.margin_s:g} s from segment edges; calibration and test windows cut from one segment are at "
        f"least {cfg.gap_s:g} s apart. Every method sees the same windows and folds.", "", stats, "", subjects,
    ]


def write_report(rows: list[dict[str, Any]], out: Path, cfg: Any) -> Path:
    """summary.csv, paired.csv, report.md and the plots; returns the report path."""
    write_summary(rows, out / "summary.csv")
    plots = [plot_low_label(rows, out / "low_label.png")] + plot_confusions(rows, out)
    methods = {r["method"] for r in rows}
    primary = PRIMARY if PRIMARY in methods else next((m for m in AEMG_METHODS if m in methods), None)
    versus = sorted(methods - set(AEMG_METHODS), key=lambda m: (m != SCRATCH, m)) if primary else []
    comparisons = {other: paired(rows, primary, other) for other in versus}
    write_paired([t for tests in comparisons.values() for t in tests], out / "paired.csv")
    tests = paired_tests(rows)
    pretraining = sorted({r["pretraining"] for r in rows if r["pretraining"]})
    lines = ["# Evaluation report", "", *_protocol(rows, cfg), "",
             f"AEMG pretraining relative to the held-out subjects: {', '.join(pretraining) or 'no AEMG method'}.",
             "", "## Balanced accuracy (mean ± std [95 % CI] over held-out subjects, seeds averaged per subject)",
             markdown_table(rows, "balanced_accuracy"),
             "", "## Macro-F1 (mean ± std [95 % CI] over held-out subjects)", markdown_table(rows, "macro_f1"), "",
             "## Calibration per budget: windows (labeled seconds per class)", "",
             "Mean over held-out subjects and seeds. A budget below one window per class selects one window per "
             "class, so small budgets coincide where a subject's pool is short.", "", calibration_table(rows), ""]
    for other, pairs in comparisons.items():
        if pairs:
            title = "the same architecture from scratch" if other == SCRATCH else other
            lines += [f"## {primary} vs {title} (paired over held-out subjects)", "",
                      f"Difference in mean balanced accuracy ({primary} minus {other}), ({primary} wins / subjects, "
                      "Wilcoxon signed-rank p). **all** pools every dataset's held-out subjects.", "",
                      paired_matrix(pairs), ""]
    if tests:
        lines += ["## AEMG vs the best baseline of each cell (paired Wilcoxon signed-rank over held-out subjects)", "",
                  "| dataset | budget | AEMG | best baseline | AEMG mean | baseline mean | difference | AEMG wins | p |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {t['dataset']} | {budget_label(t['budget'])} | {t['aemg']} | {t['best_baseline']} | "
                  f"{t['aemg_mean']:.3f} | {t['baseline_mean']:.3f} | {t['difference']:+.3f} | {t['wins']}/{t['n']} | "
                  f"{t['p_value']:.3g} |" for t in tests]
        lines.append("")
    lines += ["## Time per fold (every method, budget and seed of the fold, one task)", "", fold_times(rows), ""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported on first use (Ray workers never plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_low_label(rows: list[dict[str, Any]], path: Path) -> Path:
    """Balanced accuracy vs budget (symlog x), mean ± std band over subjects, a panel per dataset."""
    plt = pyplot()
    stats = aggregate(rows)
    datasets = sorted({a["dataset"] for a in stats})
    ncols = min(3, len(datasets))
    nrows = -(-len(datasets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 1.4, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(datasets):]:
        ax.set_visible(False)
    for ax, dataset in zip(axes.flat, datasets):
        for method in sorted({a["method"] for a in stats}, key=lambda m: (m not in AEMG_METHODS, m)):
            cell = sorted((a for a in stats if a["dataset"] == dataset and a["method"] == method),
                          key=lambda a: a["budget"])
            if not cell:
                continue
            x = np.array([a["budget"] for a in cell])
            y, s = np.array([a["mean"] for a in cell]), np.array([a["std"] for a in cell])
            ours = method in AEMG_METHODS
            line, = ax.plot(x, y, marker="o", lw=2.4 if ours else 1.1, alpha=1.0 if ours else 0.8, label=method)
            if ours:  # bands for AEMG only: eight overlapping bands would hide the lines
                ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.12)
        budgets = sorted({a["budget"] for a in stats})
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.set_xlabel("calibration budget (% of the subject's labels)")
        ax.set_title(f"{dataset} (n={max(a['n'] for a in stats if a['dataset'] == dataset)})")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("balanced accuracy (held-out subject)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusions(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """confusion_<dataset>.png: row-normalized confusion summed over folds and seeds, per method, at the
    lowest and the highest budget."""
    plt = pyplot()
    paths = []
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        methods = sorted({r["method"] for r in mine}, key=lambda m: (m not in AEMG_METHODS, m))
        budgets = sorted({float(r["budget"]) for r in mine})
        budgets = [budgets[0], budgets[-1]] if len(budgets) > 1 else budgets
        classes = mine[0]["classes"]
        fig, axes = plt.subplots(len(budgets), len(methods), figsize=(2.4 * len(methods) + 0.6, 2.5 * len(budgets)),
                                 squeeze=False)
        for i, budget in enumerate(budgets):
            for j, method in enumerate(methods):
                ax = axes[i][j]
                chosen = [np.array(r["confusion"]) for r in mine if r["method"] == method and float(r["budget"]) == budget]
                total = np.sum(chosen, axis=0) if chosen else np.zeros((len(classes), len(classes)))
                norm = total / np.maximum(total.sum(axis=1, keepdims=True), 1)
                ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
                ax.set_title(f"{method}\n{budget_label(budget)}", fontsize=8)
                ax.set_xticks(range(len(classes)), classes if i == len(budgets) - 1 else [], rotation=90, fontsize=6)
                ax.set_yticks(range(len(classes)), classes if j == 0 else [], fontsize=6)
        fig.suptitle(f"{dataset}: confusion (rows = true class, row-normalized)", fontsize=9)
        fig.tight_layout()
        path = out / f"confusion_{dataset}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
