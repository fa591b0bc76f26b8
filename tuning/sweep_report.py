"""Results of a sweep, per configuration across folds.

    summary.csv        one row per trial: the columns of `aemg evaluate` (report.SUMMARY_COLUMNS),
                       then configuration and one column per grid key
    aggregate.csv      per configuration x method x dataset x budget x metric: mean, std and a 95 %
                       t-interval over held-out subjects (each subject's seeds averaged first), n
    report.md          the pretraining runs (final metrics, early stops) and, per dataset and method,
                       a configuration x budget table of mean ± std [95 % CI]
    heatmap_<dataset>.png   balanced accuracy over the first two grid keys (e.g. codebook size x
                       mask ratio), one panel per method x budget; heatmap_all.png: the mean over
                       datasets (each dataset weighs the same), with its table in report.md
    budget_<dataset>.png    balanced accuracy vs calibration budget, one line per configuration
    codebook.png       final codebook usage and perplexity of every pretraining vs its codebook size
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aemg_dist.evaluation.methods import AEMG_METHODS
from aemg_dist.evaluation.report import SUMMARY_COLUMNS, aggregate, budget_label, pyplot
from aemg_dist.train import last_metrics

if TYPE_CHECKING:
    from aemg_dist.evaluation.runner import EvaluateConfig
    from tuning.sweep import Configuration, PretrainRun

METRICS = ("balanced_accuracy", "macro_f1")
PRETRAIN_METRICS = ("loss", "val_loss", "mtm_accuracy", "codebook_usage", "perplexity")
ALL_DATASETS = "all"  # the pseudo-dataset of per-dataset means


def t_interval(mean: float, std: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of a mean over n subjects (nan with fewer than two)."""
    from scipy.stats import t

    if n < 2:
        return float("nan"), float("nan")
    half = float(t.ppf(0.5 + level / 2, n - 1)) * std / np.sqrt(n)
    return mean - half, mean + half


def aggregate_cells(rows: list[dict[str, Any]], configurations: list["Configuration"]) -> list[dict[str, Any]]:
    """report.aggregate per configuration, with its grid values and a 95 % CI."""
    cells = []
    for configuration in configurations:
        mine = [r for r in rows if r["configuration"] == configuration.name]
        for metric in METRICS:
            for a in aggregate(mine, metric):
                low, high = t_interval(a["mean"], a["std"], a["n"])
                cells.append({"configuration": configuration.name, **configuration.values, "metric": metric, **a,
                              "ci_low": low, "ci_high": high})
    return cells


def _write_csv(rows: list[dict[str, Any]], columns: list[str], plain: set[str], path: Path) -> Path:
    """Floats to 4 decimals, except the `plain` columns (budgets, grid values: written as given)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{r[k]:.4f}" if isinstance(r[k], float) and k not in plain else r[k] for k in columns})
    return path


def write_sweep_report(rows: list[dict[str, Any]], runs: list["PretrainRun"], configurations: list["Configuration"],
                       stopped: list[str], evaluation: "EvaluateConfig", out: Path) -> tuple[list[dict[str, Any]], Path]:
    """summary.csv, aggregate.csv, report.md and the plots; returns (aggregated cells, report path)."""
    columns = list(configurations[0].values)
    cells = aggregate_cells(rows, configurations)
    order = {c.name: i for i, c in enumerate(configurations)}
    _write_csv(sorted(rows, key=lambda r: (order[r["configuration"]], r["method"], r["dataset"], r["subject"],
                                           r["budget"], r["seed"])),
               [*SUMMARY_COLUMNS, "configuration", *columns], {"budget", *columns}, out / "summary.csv")
    _write_csv(cells, ["configuration", *columns, "metric", "method", "dataset", "budget", "mean", "std", "ci_low",
                       "ci_high", "n"], {"budget", *columns}, out / "aggregate.csv")
    finals = {r.key: last_metrics(Path(r.config.run.out) / "metrics.csv") for r in runs}
    plots = [plot_codebook(runs, finals, configurations, out / "codebook.png")]
    datasets = sorted({c["dataset"] for c in cells})
    overall = dataset_means(cells) if len(datasets) > 1 else []
    if overall:
        plots.append(plot_heatmap(overall, configurations, ALL_DATASETS, out / f"heatmap_{ALL_DATASETS}.png"))
    for dataset in datasets:
        plots += [plot_heatmap(cells, configurations, dataset, out / f"heatmap_{dataset}.png"),
                  plot_budgets(cells, configurations, dataset, out / f"budget_{dataset}.png")]
    axes = {k: ", ".join(map(str, dict.fromkeys(c.values[k] for c in configurations))) for k in columns}
    lines = [
        "# Sweep report", "",
        "Grid: " + "; ".join(f"{k} ∈ {{{v}}}" for k, v in axes.items()) +
        f" ({len(configurations)} configurations). Each configuration is pretrained "
        f"{len({r.group for r in runs})} time(s), each run without one group of the evaluated subjects, and every "
        "fold is scored with the run that never saw its held-out subject.",
        f"Protocol: {evaluation.protocol}, calibration budgets {', '.join(map(budget_label, evaluation.budgets))} of the "
        f"held-out subject's labeled repetitions, seeds {list(evaluation.seeds)}, methods {list(evaluation.methods)}. "
        "Cells: mean ± std over held-out subjects (seeds averaged first) [95 % t-interval], best configuration per "
        "budget in bold.", "",
        "## Pretraining runs", "",
        "| run | group | subjects left out | steps | " + " | ".join(PRETRAIN_METRICS) + " | status |",
        "|---|---|---|---|" + "---|" * len(PRETRAIN_METRICS) + "---|",
    ]
    for r in runs:
        final = finals[r.key]
        status = "stopped early (ASHA)" if r.configuration in stopped else "exported"
        lines.append(f"| {r.key} | {r.group} | {len(r.config.data.exclude_subjects)} | {final.get('step', 0):.0f} | "
                     + " | ".join(f"{final[m]:.3g}" if m in final else "–" for m in PRETRAIN_METRICS)
                     + f" | {status} |")
    if overall:
        lines += ["", f"## Mean over the {len(datasets)} datasets", "",
                  "Each cell: the mean of the datasets' means ± their std [95 % t-interval over datasets].",
                  configuration_tables(overall, configurations, "balanced_accuracy", unit="datasets")]
    for metric in METRICS:
        lines += ["", f"## {metric.replace('_', ' ')}", configuration_tables(cells, configurations, metric)]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return cells, path


def dataset_means(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells of the pseudo-dataset ALL_DATASETS: per configuration x method x budget x metric, the mean and std
    of the datasets' means, a 95 % t-interval over datasets, n = datasets (each dataset weighs the same)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["configuration"], c["method"], c["budget"], c["metric"]), []).append(c)
    out = []
    for members in groups.values():
        means = np.array([c["mean"] for c in members])
        mean, std = float(means.mean()), float(means.std(ddof=1)) if means.size > 1 else 0.0
        low, high = t_interval(mean, std, means.size)
        out.append({**members[0], "dataset": ALL_DATASETS, "mean": mean, "std": std, "ci_low": low, "ci_high": high,
                    "n": int(means.size)})
    return out


def configuration_tables(cells: list[dict[str, Any]], configurations: list["Configuration"], metric: str,
                         unit: str = "held-out subjects") -> str:
    """Per dataset and method: one row per configuration, one column per budget."""
    mine = {(c["configuration"], c["method"], c["dataset"], c["budget"]): c for c in cells if c["metric"] == metric}
    budgets = sorted({b for *_, b in mine})
    columns = list(configurations[0].values)
    lines = []
    for dataset in sorted({d for _, _, d, _ in mine}):
        for method in sorted({m for _, m, d, _ in mine if d == dataset}, key=lambda m: (m not in AEMG_METHODS, m)):
            here = {(c, b): v for (c, m, d, b), v in mine.items() if d == dataset and m == method}
            best = {b: max(v["mean"] for (_, bb), v in here.items() if bb == b) for b in budgets}
            n = max(v["n"] for v in here.values())
            lines += [f"\n**{dataset}, {method}** ({n} {unit})\n",
                      "| " + " | ".join(columns) + " | " + " | ".join(map(budget_label, budgets)) + " |",
                      "|" + "---|" * (len(columns) + len(budgets))]
            for configuration in configurations:
                row = []
                for b in budgets:
                    c = here.get((configuration.name, b))
                    text = f"{c['mean']:.3f} ± {c['std']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]" if c else "–"
                    row.append(f"**{text}**" if c and c["mean"] == best[b] else text)
                lines.append("| " + " | ".join(str(v) for v in configuration.values.values()) + " | "
                             + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_heatmap(cells: list[dict[str, Any]], configurations: list["Configuration"], dataset: str, path: Path) -> Path:
    """Balanced accuracy over the first grid key (rows) x the second (columns), a panel per method x budget;
    further grid keys are averaged over."""
    plt = pyplot()
    columns = list(configurations[0].values)
    ys = list(dict.fromkeys(c.values[columns[0]] for c in configurations))
    xs = list(dict.fromkeys(c.values[columns[1]] for c in configurations)) if len(columns) > 1 else [""]
    mine = [c for c in cells if c["dataset"] == dataset and c["metric"] == "balanced_accuracy"]
    methods = sorted({c["method"] for c in mine}, key=lambda m: (m not in AEMG_METHODS, m))
    budgets = sorted({c["budget"] for c in mine})
    fig, axes = plt.subplots(len(methods), len(budgets), figsize=(1.1 * len(xs) * len(budgets) + 2.4,
                                                                  0.9 * len(ys) * len(methods) + 1.2),
                             squeeze=False, layout="constrained")
    grid = np.full((len(methods), len(budgets), len(ys), len(xs)), np.nan)
    for i, method in enumerate(methods):
        for j, budget in enumerate(budgets):
            for yi, y in enumerate(ys):
                for xi, x in enumerate(xs):
                    values = [c["mean"] for c in mine if c["method"] == method and c["budget"] == budget
                              and c[columns[0]] == y and (len(columns) == 1 or c[columns[1]] == x)]
                    grid[i, j, yi, xi] = np.mean(values) if values else np.nan
    low, high = np.nanmin(grid), np.nanmax(grid)
    for i, method in enumerate(methods):
        for j, budget in enumerate(budgets):
            ax = axes[i][j]
            image = ax.imshow(grid[i, j], vmin=low, vmax=high, cmap="viridis", aspect="auto")
            for yi in range(len(ys)):
                for xi in range(len(xs)):
                    value = grid[i, j, yi, xi]
                    ax.text(xi, yi, "–" if np.isnan(value) else f"{value:.3f}", ha="center", va="center", fontsize=8,
                            color="white" if np.isnan(value) or value < (low + high) / 2 else "black")
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
            ax.set_yticks(range(len(ys)), [str(y) for y in ys])
            if i == len(methods) - 1 and len(columns) > 1:
                ax.set_xlabel(columns[1])
            if j == 0:
                ax.set_ylabel(columns[0])
            ax.set_title(f"{method}, budget {budget_label(budget)}", fontsize=9)
    over = "datasets" if dataset == ALL_DATASETS else "subjects"
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=f"balanced accuracy (mean over {over})")
    fig.suptitle(f"{'all datasets' if dataset == ALL_DATASETS else dataset}: balanced accuracy" + (f" (averaged over {', '.join(columns[2:])})"
                                                    if len(columns) > 2 else ""), fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _styles(configurations: list["Configuration"]) -> dict[str, dict[str, Any]]:
    """Matplotlib style per configuration: colour by the first grid key's value, line style and marker by
    the others', so e.g. codebook size and mask ratio read apart."""
    plt = pyplot()
    first = list(dict.fromkeys(list(c.values.values())[0] for c in configurations))
    rest = list(dict.fromkeys(tuple(list(c.values.values())[1:]) for c in configurations))
    lines, markers = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v")
    return {c.name: {"color": plt.cm.tab10(first.index(list(c.values.values())[0]) % 10),
                     "linestyle": lines[rest.index(tuple(list(c.values.values())[1:])) % len(lines)],
                     "marker": markers[rest.index(tuple(list(c.values.values())[1:])) % len(markers)]}
            for c in configurations}


def plot_budgets(cells: list[dict[str, Any]], configurations: list["Configuration"], dataset: str, path: Path) -> Path:
    """Balanced accuracy vs budget (symlog x), one line per configuration with its 95 % CI (shifted a little
    sideways so the intervals stay apart), a panel per method."""
    plt = pyplot()
    mine = [c for c in cells if c["dataset"] == dataset and c["metric"] == "balanced_accuracy"]
    methods = sorted({c["method"] for c in mine}, key=lambda m: (m not in AEMG_METHODS, m))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.4 * len(methods) + 2.6, 3.6), squeeze=False, sharey=True)
    budgets = sorted({c["budget"] for c in mine})
    styles = _styles(configurations)
    for ax, method in zip(axes[0], methods):
        for k, configuration in enumerate(configurations):
            line = sorted((c for c in mine if c["method"] == method and c["configuration"] == configuration.name),
                          key=lambda c: c["budget"])
            if not line:
                continue
            # sideways by about the same distance on the symlog axis, near 0 (linear there) as at 10 (logarithmic)
            shift = 0.025 * (k - (len(configurations) - 1) / 2)
            x = np.array([c["budget"] for c in line]) * (1 + shift) + shift
            y = np.array([c["mean"] for c in line])
            err = np.array([[c["mean"] - c["ci_low"], c["ci_high"] - c["mean"]] for c in line]).T
            ax.errorbar(x, y, yerr=np.nan_to_num(err), capsize=2, elinewidth=0.8, label=configuration.name,
                        **styles[configuration.name])
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_ylim(0, 1.02)  # a t-interval over few subjects can leave [0, 1]; accuracy cannot
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.set_xlabel("calibration budget (% of the subject's labels)")
        ax.set_title(f"{dataset}: {method}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("balanced accuracy (mean, 95 % CI)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_codebook(runs: list["PretrainRun"], finals: dict[str, dict[str, float]],
                  configurations: list["Configuration"], path: Path) -> Path:
    """Final codebook usage (share of codes used in a batch) and perplexity of every pretraining vs its
    codebook size, styled per configuration as in the budget plot."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    styles = _styles(configurations)
    sizes = sorted({r.config.model.codebook_size for r in runs})
    for ax, metric in zip(axes, ("codebook_usage", "perplexity")):
        for configuration in configurations:
            mine = [r for r in runs if r.configuration == configuration.name and metric in finals[r.key]]
            ax.scatter([r.config.model.codebook_size for r in mine], [finals[r.key][metric] for r in mine],
                       color=styles[configuration.name]["color"], marker=styles[configuration.name]["marker"],
                       label=configuration.name, s=36, alpha=0.85)
        if metric == "perplexity":  # a codebook used uniformly has perplexity = its size
            ax.plot(sizes, sizes, color="grey", lw=0.8, ls="--", label="all codes used uniformly")
            ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("codebook size")
        ax.set_title("codes used per batch (share)" if metric == "codebook_usage" else "code perplexity", fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("final codebook health of each pretraining", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
