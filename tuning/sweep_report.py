"""Results of a sweep, per configuration across folds.

    summary.csv        one row per trial: the columns of `aemg evaluate` (report.SUMMARY_COLUMNS),
                       then configuration and one column per grid key
    aggregate.csv      per configuration x role x method x dataset x budget x metric: mean, std and a
                       95 % t-interval over held-out subjects (each subject's seeds averaged first), n
    report.md          the pretraining runs (final metrics, early stops); with a splits file, the
                       configuration selected on the development subjects (the best mean balanced
                       accuracy of the primary AEMG method over datasets and budgets) and its accuracy on
                       the test subjects, apart from the full grid, which is shown on the development
                       subjects only (what the selection saw); per dataset and method, a configuration x
                       budget table of mean ± std [95 % CI]
    heatmap_<dataset>.png   balanced accuracy over the first two grid keys (e.g. codebook size x
                       mask ratio), one panel per method x budget; heatmap_all.png: the mean over
                       datasets (each dataset weighs the same), with its table in report.md
    budget_<dataset>.png    balanced accuracy vs calibration budget, one line per configuration
    codebook.png       final codebook usage and perplexity of every pretraining vs its codebook size
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from aemg_dist.evaluation.methods import AEMG_METHODS
from aemg_dist.evaluation.report import PRIMARY, SUMMARY_COLUMNS, aggregate, budget_label, pyplot, t_interval
from aemg_dist.artifacts import last_metrics
from aemg_dist.evaluation.runner import EvaluateConfig
from tuning.trials import Configuration, PretrainRun

METRICS = ("balanced_accuracy", "macro_f1")
PRETRAIN_METRICS = ("loss", "val_loss", "mtm_accuracy", "codebook_usage", "perplexity")
ALL_DATASETS = "all"  # the pseudo-dataset of per-dataset means


def aggregate_cells(rows: list[dict[str, Any]], configurations: list["Configuration"]) -> list[dict[str, Any]]:
    """report.aggregate (with its 95 % CI) per configuration and fold role, with the grid values."""
    cells = []
    for configuration in configurations:
        mine = [r for r in rows if r["configuration"] == configuration.name]
        for role in sorted({r.get("role", "") for r in mine}):
            for metric in METRICS:
                for a in aggregate([r for r in mine if r.get("role", "") == role], metric):
                    cells.append({"configuration": configuration.name, **configuration.values, "role": role,
                                  "metric": metric, **a})
    return cells


def select_configuration(cells: list[dict[str, Any]], configurations: list["Configuration"],
                         role: str = "development") -> tuple[str, str, dict[str, float]]:
    """(selected configuration, the method it was selected by, {configuration: score}) where a configuration's score
    is its primary AEMG method's balanced accuracy on the `role` folds, averaged over budgets and over datasets
    (each dataset weighs the same). Raises ValueError when no cell has that role."""
    mine = [c for c in cells if c["role"] == role and c["metric"] == "balanced_accuracy"]
    methods = {c["method"] for c in mine}
    method = PRIMARY if PRIMARY in methods else next((m for m in AEMG_METHODS if m in methods), None)
    if method is None:
        raise ValueError(f"no {role} cells of an AEMG method to select a configuration by")
    scores = {}
    for configuration in configurations:
        here = [c for c in mine if c["configuration"] == configuration.name and c["method"] == method]
        if here:  # budgets averaged within each dataset, then datasets averaged
            scores[configuration.name] = float(np.mean([np.mean([c["mean"] for c in here if c["dataset"] == d])
                                                        for d in sorted({c["dataset"] for c in here})]))
    return max(scores, key=scores.get), method, scores


def _write_csv(rows: list[dict[str, Any]], columns: list[str], plain: set[str], path: Path) -> Path:
    """Floats to 4 decimals, except the `plain` columns (budgets, grid values: written as given)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{r[k]:.4f}" if isinstance(r[k], float) and k not in plain else r[k] for k in columns})
    return path


def write_sweep_report(rows: list[dict[str, Any]], runs: list["PretrainRun"], configurations: list["Configuration"],
                       stopped: list[str], evaluation: "EvaluateConfig",
                       out: Path) -> tuple[list[dict[str, Any]], Path, str]:
    """summary.csv, aggregate.csv, report.md and the plots; returns (aggregated cells of every role, report path,
    the configuration selected on the development subjects or "" without a split)."""
    columns = list(configurations[0].values)
    cells = aggregate_cells(rows, configurations)
    order = {c.name: i for i, c in enumerate(configurations)}
    _write_csv(sorted(rows, key=lambda r: (order[r["configuration"]], r["method"], r["dataset"], r["subject"],
                                           r["budget"], r["seed"])),
               [*SUMMARY_COLUMNS, "configuration", *columns], {"budget", *columns}, out / "summary.csv")
    _write_csv(cells, ["configuration", *columns, "role", "metric", "method", "dataset", "budget", "mean", "std",
                       "ci_low", "ci_high", "n"], {"budget", *columns}, out / "aggregate.csv")
    every_role = cells
    roles = {c["role"] for c in cells}
    selection = select_configuration(cells, configurations) if "development" in roles else None
    if selection:  # the grid as the selection saw it: development folds only
        test_cells = [c for c in cells if c["role"] == "test" and c["configuration"] == selection[0]]
        cells = [c for c in cells if c["role"] == "development"]
    finals = {r.key: last_metrics(r.config.run.out) for r in runs}
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
        f"held-out subject's calibration pool in labeled time, {evaluation.normalization} statistics, seeds "
        f"{list(evaluation.seeds)}, methods {list(evaluation.methods)}. "
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
    lines += ["", *_selection_section(selection, test_cells if selection else [], configurations, evaluation)]
    scope = " on the development subjects" if selection else ""
    if overall:
        lines += ["", f"## Mean over the {len(datasets)} datasets{scope}", "",
                  "Each cell: the mean of the datasets' means ± their std [95 % t-interval over datasets].",
                  configuration_tables(overall, configurations, "balanced_accuracy", unit="datasets")]
    for metric in METRICS:
        lines += ["", f"## {metric.replace('_', ' ')}{scope}", configuration_tables(cells, configurations, metric)]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return every_role, path, selection[0] if selection else ""


def _selection_section(selection: tuple[str, str, dict[str, float]] | None, test_cells: list[dict[str, Any]],
                       configurations: list["Configuration"], evaluation: "EvaluateConfig") -> list[str]:
    """The configuration chosen on the development subjects, and its accuracy on the test subjects."""
    if selection is None:
        return ["## Selection", "", "No development subjects (no evaluation.splits, or role=test): every table below "
                "scores every evaluated fold, so the best cell of the grid is not an unbiased estimate for new users."]
    chosen, method, scores = selection
    lines = ["## Selected on the development subjects", "",
             f"Score: {method}'s balanced accuracy on the development folds of `{evaluation.splits}`, averaged over "
             "budgets and over datasets (each dataset weighs the same). The test subjects played no part.", "",
             "| configuration | development score |", "|---|---|"]
    lines += [f"| {'**' + name + '**' if name == chosen else name} | {score:.3f} |"
              for name, score in sorted(scores.items(), key=lambda kv: -kv[1])]
    if not test_cells:
        return lines + ["", f"The test subjects were not evaluated (evaluation.role={evaluation.role}): score "
                        f"{chosen} on them with `aemg evaluate --splits {evaluation.splits} --role test`."]
    lines += ["", f"## {chosen} on the test subjects", "",
              "Mean ± std [95 % CI] over the test subjects (seeds averaged per subject); these are the sweep's "
              "reported numbers.", ""]
    mine = [c for c in test_cells if c["metric"] == "balanced_accuracy"]
    budgets = sorted({c["budget"] for c in mine})
    lines += ["| dataset | method | n | " + " | ".join(map(budget_label, budgets)) + " |",
              "|---|---|---|" + "---|" * len(budgets)]
    for dataset, m in sorted({(c["dataset"], c["method"]) for c in mine}):
        here = {c["budget"]: c for c in mine if c["dataset"] == dataset and c["method"] == m}
        lines.append(f"| {dataset} | {m} | {max(c['n'] for c in here.values())} | " + " | ".join(
            f"{here[b]['mean']:.3f} ± {here[b]['std']:.3f} [{here[b]['ci_low']:.2f}, {here[b]['ci_high']:.2f}]"
            if b in here else "–" for b in budgets) + " |")
    return lines


def dataset_means(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells of the pseudo-dataset ALL_DATASETS: per configuration x method x budget x metric, the mean and std
    of the datasets' means, a 95 % t-interval over datasets, n = datasets (each dataset weighs the same)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["configuration"], c.get("role", ""), c["method"], c["budget"], c["metric"]), []).append(c)
    out = []
    for members in groups.values():
        means = np.array([c["mean"] for c in members])
        mean, std = float(means.mean()), float(means.std(ddof=1)) if means.size > 1 else 0.0
        low, high = t_interval(means)
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
