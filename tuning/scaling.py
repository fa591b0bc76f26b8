"""`aemg scaling fit|plot`: a scaling law fitted to a table of pretraining runs, with its plots.

The input is a CSV with one row per pretraining run and at least the columns

    N       parameters (non-embedding, `aemg_dist.model.param_count(cfg, non_embedding=True)`)
    D       training tokens seen
    loss    final held-out pretraining loss

plus, optionally, `flops` (the real count; 6 N D when absent) and a grouping column for the
bootstrap (e.g. `seed` or `subject`: whole groups are resampled). `fit` writes OUT/fit.json (the
law, 95 % intervals, bootstrap samples), OUT/fit.md and the plots; `plot` redraws the plots from a
saved fit. The fit itself is `tuning/scaling_fit.py` (Chinchilla approach 3).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tuning.scaling_fit import PARAMS, bootstrap_scaling_law, load_fit, plot_scaling, save_fit

REQUIRED = ("N", "D", "loss")


def read_runs(path: str | Path, group_column: str | None = None) -> dict[str, np.ndarray]:
    """The runs table as arrays N, D, loss (float) and, when asked for, groups; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give the runs table (CSV with columns N, D, loss)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    missing = [c for c in (*REQUIRED, *([group_column] if group_column else [])) if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; it has {sorted(columns)}")
    runs: dict[str, np.ndarray] = {}
    for name in REQUIRED:
        try:
            runs[name] = np.array([float(r[name]) for r in rows])
        except ValueError as err:
            raise ValueError(f"{path}: column {name!r} is not numeric: {err}") from None
    if group_column:
        runs["groups"] = np.array([r[group_column] for r in rows])
    return runs


def fit_runs(runs_csv: str | Path, out: str | Path, group_column: str | None = None, n_boot: int = 200,
             seed: int = 0, flop_budgets: list[float] | None = None) -> dict:
    """Fit, bootstrap, save OUT/fit.json and OUT/fit.md, draw the plots; returns the bootstrap result."""
    runs = read_runs(runs_csv, group_column)
    result = bootstrap_scaling_law(runs["N"], runs["D"], runs["loss"], groups=runs.get("groups"), n_boot=n_boot,
                                   seed=seed)
    out = Path(out)
    save_fit(result, out / "fit.json")
    law = result["point"]
    lines = ["# Scaling-law fit", "", f"L(N, D) = E + A / N^alpha + B / D^beta fitted to {len(runs['N'])} runs of "
             f"{runs_csv} (Huber on log-loss, L-BFGS-B from a screened grid); {n_boot} bootstrap resamples of "
             f"{result['n_groups']} {'groups (' + group_column + ')' if group_column else 'runs'}.", "",
             "| parameter | fit | 95 % interval |", "|---|---|---|"]
    lines += [f"| {p} | {getattr(law, p):.4g} | [{result['ci'][p][0]:.4g}, {result['ci'][p][1]:.4g}] |" for p in PARAMS]
    budgets = flop_budgets or _default_budgets(runs)
    lines += ["", "Compute-optimal split (C = 6 N D):", "", "| FLOPs | N | D | predicted loss |", "|---|---|---|---|"]
    for budget in budgets:
        n_opt, d_opt = law.compute_optimal(budget)
        lines.append(f"| {budget:.3g} | {float(n_opt):.3g} | {float(d_opt):.3g} | {float(law.predict(n_opt, d_opt)):.4f} |")
    plots = plot_scaling(runs, law, out, flop_budgets=budgets)
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    (out / "fit.md").write_text("\n".join(lines) + "\n")
    return result


def plot_fit(fit_json: str | Path, runs_csv: str | Path, out: str | Path) -> list[Path]:
    """Redraw loss vs N, loss vs D and the IsoFLOP curves of a saved fit against its runs."""
    runs = read_runs(runs_csv)
    return plot_scaling(runs, load_fit(fit_json)["point"], out, flop_budgets=_default_budgets(runs))


def _default_budgets(runs: dict[str, np.ndarray]) -> list[float]:
    """Three budgets spanning the runs' own compute 6 N D, geometric."""
    compute = 6 * runs["N"] * runs["D"]
    return [float(c) for c in np.geomspace(compute.min(), compute.max(), 3)]
