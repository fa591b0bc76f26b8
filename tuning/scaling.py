"""`aemg scaling run|fit|plot`: pretraining runs over model sizes x token budgets, the scaling law fitted
to them, and what the law means downstream.

`run` (a ScalingRunConfig YAML, e.g. configs/scaling/real.yaml) pretrains every (size, steps, seed) of
the grid as a Ray Tune trial that drives a Ray Train job (tuning/sweep.py's pretraining phase: the
same trials, resume and run folders), then writes OUT/runs.csv with, per run, N (non-embedding
parameters), D (tokens seen: steps x data.batch_size windows x their mean token count after
data.max_tokens, over the run's training split), flops (the preset's real count:
`model.training_flops`, attention included) and loss (the final held-out `metric`), and fits the
law into OUT/fit/. With `evaluate: true` it then scores every run LOSO (tuning/sweep.py's evaluation
phase; each pretraining leaves out every evaluated subject) and relates accuracy to scale:
OUT/downstream.csv, downstream.png and the Spearman correlations in OUT/report.md.

`fit` and `plot` work on any runs table: a CSV with one row per pretraining run and at least the columns

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
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from aemg_dist import storage
from aemg_dist.artifacts import last_metrics
from aemg_dist.config import ConfigError, check_ranges, load_config
from aemg_dist.evaluation.runner import EvaluateConfig
from aemg_dist.train import PretrainConfig, load_pretrain_config
from tuning.scaling_fit import (MIN_DISTINCT, MIN_POINTS, PARAMS, bootstrap_scaling_law, load_fit, plot_scaling,
                                save_fit)
from tuning.trials import (ConcurrencyConfig, Configuration, PretrainRun, ResourcesConfig, SweepError, absolute_paths,
                           check_evaluation_unset, driving, evaluate_phase, evaluated_folds, pretrain_phase, pretrain_runs)

REQUIRED = ("N", "D", "loss")
CONFIG_FILE = "scaling.yaml"
RUNS_FILE = "runs.csv"
# set by the grid itself for every run (sizes may set preset and model.*, and whatever else they like)
GRID_KEYS = ("optim.max_steps", "run.seed")


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


# ---------------------------------------------------------------- `aemg scaling run`

@dataclass
class FitConfig:
    n_boot: int = 200  # bootstrap resamples (of seeds when there are several, else of runs)
    seed: int = 0
    flop_budgets: list[float] = field(default_factory=list)  # compute-optimal table; empty = three spanning the runs

    def __post_init__(self) -> None:
        check_ranges(self, n_boot="[1, inf)", seed="[0, inf)", flop_budgets="(0, inf)")


@dataclass
class ScalingRunConfig:
    pretrain_config: str = "configs/pretrain/tiny.yaml"  # an `aemg pretrain` YAML shared by every run
    pretrain_overrides: list[str] = field(default_factory=list)  # key=value on top of it (data.tokens=..., ...)
    # model size name -> key=value overrides that make it (preset=small, model.d_model=128, ...), smallest first
    sizes: dict[str, list[str]] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)  # token budgets: optimizer steps of data.batch_size windows each
    seeds: list[int] = field(default_factory=lambda: [0])  # run.seed; several give the bootstrap whole seeds
    metric: str = "val_loss"  # the final held-out pretraining loss the law is fitted to (a metrics.csv column)
    fit: FitConfig = field(default_factory=FitConfig)
    evaluate: bool = False  # also score every run LOSO and relate accuracy to N, D and FLOPs
    evaluation: EvaluateConfig = field(default_factory=lambda: EvaluateConfig(methods=["aemg_finetune"]))
    out: str = "runs/scaling"
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_concurrent: ConcurrencyConfig = field(default_factory=ConcurrencyConfig)
    address: str = ""  # Ray cluster; empty = this process's Ray, else a local one

    def __post_init__(self) -> None:
        if not self.sizes or not self.steps:
            raise ValueError("give sizes (name -> model overrides) and steps (token budgets), e.g. "
                             "sizes: {tiny: [preset=tiny]}, steps: [250, 500, 1000]")
        check_ranges(self, steps="[1, inf)", seeds="[0, inf)")
        if len(set(self.steps)) < len(self.steps) or len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"steps must be distinct positive integers and seeds distinct, got {self.steps}, "
                             f"{self.seeds}")
        taken = sorted({o.split("=", 1)[0] for overrides in self.sizes.values() for o in overrides} & set(GRID_KEYS))
        if taken:
            raise ValueError(f"sizes may not set {taken}: steps and seeds set them")
        if self.evaluate and not self.evaluation.corpus:
            raise ValueError("evaluate: true needs evaluation.corpus (a CORPUS.zarr)")
        check_evaluation_unset(self.evaluation, "scaling run")


def load_scaling_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ScalingRunConfig:
    """Defaults < YAML file < key=value overrides, validated (paths are resolved by `scaling_run`)."""
    return load_config(ScalingRunConfig, path, overrides)


@dataclass
class ScalingResult:
    out: Path
    runs: list[dict[str, Any]]  # the rows of OUT/runs.csv
    fit: dict[str, Any] | None  # bootstrap_scaling_law's result; None with too few sizes or budgets to fit
    downstream: list[dict[str, Any]]  # the rows of OUT/downstream.csv (evaluate: true)
    report: Path
    seconds: float


def grid_configurations(cfg: ScalingRunConfig) -> dict[str, tuple[Configuration, PretrainConfig]]:
    """{run name: (its grid values, its resolved PretrainConfig)} for every size x steps x seed."""
    grid = {}
    for size, size_overrides in cfg.sizes.items():
        for steps in cfg.steps:
            for seed in cfg.seeds:
                name = f"{size}-s{steps}" + (f"-seed{seed}" if len(cfg.seeds) > 1 else "")
                overrides = [*cfg.pretrain_overrides, *size_overrides, f"optim.max_steps={steps}", f"run.seed={seed}"]
                try:
                    config = load_pretrain_config(cfg.pretrain_config, overrides)
                except ConfigError as err:
                    raise ConfigError(f"scaling run {name}: {err}") from None
                if not config.dist.ray:
                    raise ConfigError("scaling runs are Ray Train jobs driven by Tune trials; remove dist.ray=false")
                grid[name] = (Configuration(name, {"size": size, "steps": steps, "seed": seed}), config)
    return grid


def run_row(run: PretrainRun, values: dict[str, Any], metric: str, lengths: np.ndarray) -> dict[str, Any]:
    """One row of runs.csv: N, D and FLOPs of what the run trained on, and its final metrics.

    lengths: the token count of every window of the run's training split, after data.max_tokens. Batches
    are uniform draws from it, so steps x batch_size windows carry that many times its mean in tokens."""
    from aemg_dist.model import param_count, training_flops

    model, windows = run.config.model, run.config.optim.max_steps * run.config.data.batch_size
    final = last_metrics(run.config.run.out)
    if metric not in final:
        raise SweepError(f"run {run.key} reported no {metric} (columns {sorted(final)}); is there a validation split?")
    return {"run": run.configuration, **values, "N": param_count(model, non_embedding=True),
            "params": param_count(model), "D": windows * float(lengths.mean()),
            "flops": windows * training_flops(model, lengths) / len(lengths), "loss": final[metric],
            **{k: final[k] for k in ("recon_loss", "mtm_loss", "mtm_accuracy", "elapsed_s") if k in final}}


def _training_lengths(config: PretrainConfig, cache: dict[str, np.ndarray]) -> np.ndarray:
    """Token counts of the training split's windows (one read per distinct data config)."""
    from aemg_dist.train import split_tables

    key = json.dumps(asdict(config.data), sort_keys=True)
    if key not in cache:
        train, _ = split_tables(config.data, columns=["n_tokens"])
        cache[key] = np.minimum(train.column("n_tokens").to_numpy(), config.data.max_tokens)
    return cache[key]


def scaling_run(cfg: ScalingRunConfig, resume: bool = False, progress: bool = True) -> ScalingResult:
    """Pretrain the grid (or with resume, what is left of it), write runs.csv, fit the law, and with
    cfg.evaluate score every run LOSO; returns what was written."""
    from aemg_dist.parallel import ensure_shared

    started = time.perf_counter()
    cfg = absolute_paths(cfg, "scaling run")
    out = Path(cfg.out)
    grid = grid_configurations(cfg)
    tokens = storage.absolute(next(iter(grid.values()))[1].data.tokens)
    with driving(cfg, out, CONFIG_FILE, tokens, cfg.evaluation.corpus if cfg.evaluate else "", resume, "scaling run"):
        ensure_shared([("out", out)], address=cfg.address or None)  # trials on every node write run folders there
        evaluation = replace(cfg.evaluation, out=str(out))
        windows, folds, groups = evaluated_folds(evaluation, tokens, 1, progress) if cfg.evaluate else ("", [], [[]])
        runs = pretrain_runs({name: config for name, (_, config) in grid.items()}, out, groups)
        pretrain_phase(runs, out, resume, progress, cfg.resources.pretrain, cfg.max_concurrent.pretrain)
        lengths: dict[str, np.ndarray] = {}
        table = [run_row(r, grid[r.configuration][0].values, cfg.metric, _training_lengths(r.config, lengths))
                 for r in runs]
        _write_rows(table, out / RUNS_FILE)
        fit = None
        if len(table) >= MIN_POINTS and min(len(cfg.sizes), len(cfg.steps)) >= MIN_DISTINCT:
            fit = fit_runs(out / RUNS_FILE, out / "fit", group_column="seed" if len(cfg.seeds) > 1 else None,
                           n_boot=cfg.fit.n_boot, seed=cfg.fit.seed, flop_budgets=cfg.fit.flop_budgets or None)
        downstream: list[dict[str, Any]] = []
        if cfg.evaluate:
            configurations = [configuration for configuration, _ in grid.values()]
            rows, errors = evaluate_phase(evaluation, configurations, runs, folds, windows, out, resume, progress,
                                          cfg.resources.evaluate, cfg.max_concurrent.evaluate)
            if errors:
                raise SweepError(f"{len(errors)} evaluation trial(s) failed ({', '.join(list(errors)[:4])}): "
                                 f"{next(iter(errors.values()))}; run again with --resume")
            downstream = downstream_rows(table, rows, configurations)
            _write_rows(downstream, out / "downstream.csv")
            plot_downstream(downstream, out / "downstream.png")
        report = write_scaling_report(cfg, table, fit, downstream, out)
    return ScalingResult(out=out, runs=table, fit=fit, downstream=downstream, report=report,
                         seconds=time.perf_counter() - started)


def _write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    staging = path.with_suffix(".tmp")
    with staging.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    staging.replace(path)  # whole or absent
    return path


def downstream_rows(table: list[dict[str, Any]], rows: list[dict[str, Any]],
                    configurations: list[Configuration]) -> list[dict[str, Any]]:
    """Per run x method x budget: balanced accuracy averaged over the evaluated datasets (sweep_report.dataset_means:
    each dataset's mean over its held-out subjects first, so a dataset with more folds does not weigh more),
    next to N, D, FLOPs."""
    from tuning.sweep_report import aggregate_cells, dataset_means

    scale = {r["run"]: {k: r[k] for k in ("run", "size", "steps", "seed", "N", "D", "flops", "loss")} for r in table}
    cells = dataset_means([c for c in aggregate_cells(rows, configurations) if c["metric"] == "balanced_accuracy"])
    return [{**scale[c["configuration"]], "method": c["method"], "budget": c["budget"], "balanced_accuracy": c["mean"],
             "datasets": c["n"]} for c in cells]


def plot_downstream(rows: list[dict[str, Any]], path: Path) -> Path:
    """Balanced accuracy vs pretraining FLOPs (top) and vs held-out pretraining loss (bottom), one column per
    budget, one line per model size through its token budgets (first method only)."""
    from aemg_dist.evaluation.report import budget_label, pyplot

    plt = pyplot()
    method = rows[0]["method"]
    mine = [r for r in rows if r["method"] == method]
    budgets = sorted({r["budget"] for r in mine})
    sizes = list(dict.fromkeys(r["size"] for r in mine))
    fig, axes = plt.subplots(2, len(budgets), figsize=(3.6 * len(budgets), 6.4), squeeze=False)
    for col, budget in enumerate(budgets):
        for size in sizes:
            points = sorted((r["flops"], r["loss"], r["balanced_accuracy"]) for r in mine
                            if r["budget"] == budget and r["size"] == size)
            flops, loss, accuracy = map(np.array, zip(*points))
            axes[0, col].plot(flops, accuracy, marker="o", label=size)
            axes[1, col].plot(loss, accuracy, marker="o", linestyle="none", label=size)
        axes[0, col].set_xscale("log")
        axes[0, col].set(title=f"{method}, budget {budget_label(budget)}", xlabel="pretraining FLOPs")
        axes[1, col].set(xlabel="held-out pretraining loss")
        for row in range(2):
            axes[row, col].set_ylabel("balanced accuracy (mean over datasets)")
            axes[row, col].grid(alpha=0.3)
    axes[0, 0].legend(title="model size", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_accuracy_correlations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spearman's rho (and p) between held-out pretraining loss and accuracy across runs, per method x budget;
    negative = lower loss, better accuracy."""
    from scipy.stats import spearmanr

    result = []
    for method, budget in sorted({(r["method"], r["budget"]) for r in rows}):
        mine = [r for r in rows if (r["method"], r["budget"]) == (method, budget)]
        rho, p = spearmanr([r["loss"] for r in mine], [r["balanced_accuracy"] for r in mine]) if len(mine) > 2 \
            else (float("nan"), float("nan"))
        result.append({"method": method, "budget": budget, "rho": float(rho), "p": float(p), "runs": len(mine)})
    return result


def write_scaling_report(cfg: ScalingRunConfig, table: list[dict[str, Any]], fit: dict[str, Any] | None,
                         downstream: list[dict[str, Any]], out: Path) -> Path:
    from aemg_dist.evaluation.report import budget_label

    lines = ["# Scaling run", "", f"{len(table)} pretraining runs: sizes {', '.join(cfg.sizes)} x steps "
             f"{', '.join(map(str, cfg.steps))} x seeds {', '.join(map(str, cfg.seeds))}; loss = final {cfg.metric} "
             "on the held-out recordings.", "", "| run | N | D (tokens) | FLOPs | loss | mtm_accuracy |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['N']:.3g} | {r['D']:.3g} | {r['flops']:.3g} | {r['loss']:.4f} | "
              f"{r.get('mtm_accuracy', float('nan')):.3f} |" for r in table]
    if fit is None:
        lines += ["", f"No fit: five parameters need at least {MIN_POINTS} runs over at least {MIN_DISTINCT} sizes and "
                  f"{MIN_DISTINCT} token budgets."]
    else:
        law = fit["point"]
        lines += ["", f"Fit (details in fit/fit.md): L(N, D) = {law.E:.3g} + {law.A:.3g} / N^{law.alpha:.3f} + "
                  f"{law.B:.3g} / D^{law.beta:.3f}; 95 % intervals alpha [{fit['ci']['alpha'][0]:.3f}, "
                  f"{fit['ci']['alpha'][1]:.3f}], beta [{fit['ci']['beta'][0]:.3f}, {fit['ci']['beta'][1]:.3f}].",
                  "", "![loss vs N](fit/loss_vs_N.png) ![loss vs D](fit/loss_vs_D.png) ![IsoFLOP](fit/isoflop.png)"]
    if downstream:
        lines += ["", "## Downstream: LOSO balanced accuracy vs pretraining scale", "",
                  "Mean over datasets of the mean over held-out subjects; every pretraining left out every evaluated "
                  "subject. Spearman's rho between held-out pretraining loss and accuracy across the runs "
                  "(negative: lower loss, better accuracy):", "", "| method | budget | rho | p | runs |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['method']} | {budget_label(c['budget'])} | {c['rho']:.2f} | {c['p']:.3f} | {c['runs']} |"
                  for c in loss_accuracy_correlations(downstream)]
        lines += ["", "![accuracy vs scale](downstream.png)"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
