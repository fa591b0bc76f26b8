"""`aemg sweep`: pretrain one model per grid configuration, then score each with LOSO folds x
calibration budgets, both phases as Ray Tune experiments.

0. Labeled windows: the corpus is tokenized once into OUT/windows (runner.labeled_tokens, with the
   pretraining tokens' event settings). They decide the folds, and so the subjects every
   pretraining leaves out, before anything is trained.
1. Pretraining (Tune experiment OUT/tune/pretrain): one trial per (configuration, pretraining
   group). The trial is a driver without CPUs of its own that runs `aemg_dist.train.pretrain` as a
   Ray Train job with Tune's `TuneReportCallback` (Ray 2.60's pattern for Train V2 under Tune), so
   Tune sees every checkpoint's metrics and ASHA, when enabled, can stop a poor configuration.
   Group g's run leaves out group g of `runner.exclusion_groups` over the evaluated subjects (one
   group: every evaluated subject). Its run folder is OUT/pretrain/<configuration>-g<group>; a run
   that has exported already is reused, never retrained.
2. Evaluation (Tune experiment OUT/tune/evaluate): one trial per (configuration, fold, budget),
   so folds run in parallel across the cluster. A trial calls `runner.run_fold` with the run that
   never saw the fold's subject (`runner.assign_checkpoints`, require_unseen) and
   `budgets=[budget]`, writes its rows to OUT/trials/<trial>.json and reports the means to Tune.
3. Report (sweep_report.py): summary.csv, aggregate.csv, report.md and plots. With development subjects
   (evaluation.splits), the configuration with the best development score is selected, reported apart from the
   full grid with its test accuracy (when role=all), and written to OUT/selected.json.

`--resume` restores both Tune experiments (`Tuner.restore`): finished trials keep their results,
unfinished ones run again (a pretraining continues from its last Ray Train checkpoint), errored
ones restart. OUT/executions.jsonl logs every trial start (written by the trial; `reuse` instead when
it found its finished output and skipped the work) and finish (written by this driver when Tune
records it), one JSON line each.

A driver that dies abruptly (SIGKILL, OOM, a lost head-node login) ends its trials with it: Ray
reaps the actors it owned, the trial actors and through them the Ray Train jobs' workers. Tune saves
its experiment state at most every ~10 s (TUNE_GLOBAL_CHECKPOINT_S, "auto") and copies it into
OUT/tune/<phase> in the background, so the saved state can predate the last finished trials, or not
exist yet when the driver died in a phase's first seconds (Tune then starts the phase over). Trials
are therefore idempotent rather than Tune's checkpoints more frequent: a trial Tune runs again
reuses a finished export (its config.json is written last) or rows file (written whole) and reports
it, so after `--resume` no training or evaluation that finished runs again. A pretraining trains
again at most the steps since the last checkpoint Ray Train had registered: a worker runs at most
one reported checkpoint ahead of that, so up to two checkpoint intervals on a slow cluster.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ray import tune

from aemg_dist import storage
from aemg_dist.config import ConfigError, check_ranges, load_config
from aemg_dist.evaluation.methods import AEMG_METHODS
from aemg_dist.evaluation.runner import EvaluateConfig, assign_checkpoints, exclusion_groups, labeled_tokens, run_fold
from aemg_dist.train import PretrainConfig, load_pretrain_config, pretrain
from tuning.sweep_report import write_sweep_report
from tuning.trials import (AshaConfig, ConcurrencyConfig, Configuration, ResourcesConfig, SweepError, absolute_paths,
                           check_evaluation_unset, driving, evaluate_phase, evaluated_folds, exported, pretrain_phase,
                           pretrain_runs)

CONFIG_FILE = "sweep.yaml"
SELECTED_FILE = "selected.json"  # the configuration selected on the development subjects
# set by the sweep itself for every run; a grid over them would break the folds or the run folders
RESERVED_KEYS = ("data.tokens", "data.exclude_subjects", "data.exclude_datasets", "run.out", "dist.ray")


@dataclass
class SweepConfig:
    pretrain_config: str = "configs/pretrain/tiny.yaml"  # an `aemg pretrain` YAML shared by every configuration
    pretrain_overrides: list[str] = field(default_factory=list)  # key=value on top of it (data.tokens=..., ...)
    # PretrainConfig key -> values, full product; nested ({model: {codebook_size: [...]}}, which key=value overrides
    # such as grid.model.codebook_size=[64] can address) or dotted ({model.codebook_size: [...]})
    grid: dict[str, Any] = field(default_factory=dict)
    evaluation: EvaluateConfig = field(default_factory=lambda: EvaluateConfig(methods=list(AEMG_METHODS)))
    pretrain_groups: int = 1  # pretrainings per configuration, each without one group of the evaluated subjects
    out: str = "runs/sweep"
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_concurrent: ConcurrencyConfig = field(default_factory=ConcurrencyConfig)
    asha: AshaConfig = field(default_factory=AshaConfig)
    address: str = ""  # Ray cluster; empty = this process's Ray, else a local one

    def __post_init__(self) -> None:
        self.grid = _flatten(self.grid)
        if not self.grid or any(not isinstance(v, list) or not v for v in self.grid.values()):
            raise ValueError("grid must map at least one dotted pretraining key to a non-empty list of values, "
                             "e.g. grid: {model.codebook_size: [64, 256]}")
        repeated = [k for k, v in self.grid.items() if len(set(map(str, v))) < len(v)]
        reserved = sorted(set(self.grid) & set(RESERVED_KEYS))
        if repeated or reserved:
            raise ValueError(f"grid keys {reserved} are set by the sweep itself" if reserved else
                             f"grid values repeat for {repeated}")
        check_ranges(self, pretrain_groups="[1, inf)")
        if not self.evaluation.corpus:
            raise ValueError("give evaluation.corpus (a CORPUS.zarr)")
        check_evaluation_unset(self.evaluation, "sweep")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested grid sections as dotted keys, in their order."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        parts = _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        twice = sorted(set(parts) & set(flat))
        if twice:
            raise ValueError(f"grid key(s) {twice} given twice (nested and dotted)")
        flat.update(parts)
    return flat


def load_sweep_config(path: str | Path | None, overrides: Sequence[str] = ()) -> SweepConfig:
    """Defaults < YAML file < key=value overrides, validated (paths are resolved by `sweep`)."""
    return load_config(SweepConfig, path, overrides)


# ---------------------------------------------------------------- the plan

def configurations(grid: dict[str, list[Any]]) -> list[Configuration]:
    """The full product of the grid, in the grid's order."""
    keys = list(grid)
    short = [k.rsplit(".", 1)[-1] for k in keys]
    columns = short if len(set(short)) == len(short) else [k.replace(".", "_") for k in keys]
    text = lambda v: re.sub(r"[^A-Za-z0-9.+-]", "", f"{v:g}" if isinstance(v, float) else str(v))
    return [Configuration("_".join(f"{c}-{text(v)}" for c, v in zip(columns, combo)), dict(zip(columns, combo)))
            for combo in itertools.product(*(grid[k] for k in keys))]


def pretrain_configs(cfg: SweepConfig, grid: list[Configuration]) -> dict[str, PretrainConfig]:
    """{configuration name: its resolved PretrainConfig}, validated before anything starts."""
    configs = {}
    for configuration in grid:
        grid_overrides = [f"{k}={v}" for k, v in zip(cfg.grid, configuration.values.values())]
        try:
            config = load_pretrain_config(cfg.pretrain_config, [*cfg.pretrain_overrides, *grid_overrides])
        except ConfigError as err:
            raise ConfigError(f"grid configuration {configuration.name}: {err}") from None
        if not config.dist.ray:
            raise ConfigError("a sweep runs every pretraining as a Ray Train job; remove dist.ray=false")
        every = config.run.checkpoint_every
        if cfg.asha.enabled and cfg.asha.metric == "val_loss" and every % config.run.val_every:
            raise ConfigError(f"asha.metric=val_loss needs run.val_every ({config.run.val_every}) to divide "
                              f"run.checkpoint_every ({every}): Tune sees the metrics of checkpoints only")
        configs[configuration.name] = config
    return configs


@dataclass
class SweepResult:
    out: Path
    rows: list[dict[str, Any]]  # one per (configuration, method, fold, budget, seed)
    cells: list[dict[str, Any]]  # aggregated: configuration x method x dataset x budget x metric
    report: Path
    stopped_early: list[str]  # configurations ASHA stopped (no evaluation)
    seconds: float
    selected: str = ""  # the configuration selected on the development subjects ("" without a splits file)


def sweep(cfg: SweepConfig, resume: bool = False, progress: bool = True) -> SweepResult:
    """Run (or with resume, continue) the sweep and write its report."""
    from aemg_dist.parallel import ensure_shared

    started = time.perf_counter()
    cfg = absolute_paths(cfg, "sweep")
    out = Path(cfg.out)
    grid = configurations(cfg.grid)
    configs = pretrain_configs(cfg, grid)
    tokens = storage.absolute(next(iter(configs.values())).data.tokens)  # one folder: data.tokens is not a grid key
    with driving(cfg, out, CONFIG_FILE, tokens, cfg.evaluation.corpus, resume, "sweep"):
        ensure_shared([("out", out)], address=cfg.address or None)  # trials on every node write runs and rows there
        evaluation = replace(cfg.evaluation, out=str(out))  # OUT/windows: the labeled windows
        windows, folds, groups = evaluated_folds(evaluation, tokens, cfg.pretrain_groups, progress)
        runs = pretrain_runs(configs, out, groups)
        pretrain_phase(runs, out, resume, progress, cfg.resources.pretrain, cfg.max_concurrent.pretrain, cfg.asha)
        finished = {r.key for r in runs if exported(Path(r.config.run.out))}
        stopped = [c.name for c in grid if any(r.key not in finished for r in runs if r.configuration == c.name)]
        scored = [c for c in grid if c.name not in stopped]
        rows, errors = evaluate_phase(evaluation, scored, runs, folds, windows, out, resume, progress,
                                      cfg.resources.evaluate, cfg.max_concurrent.evaluate)
        values = {c.name: c.values for c in grid}
        rows = [{**r, **values[r["configuration"]]} for r in rows]
        cells, report, selected = write_sweep_report(rows, runs, grid, stopped, evaluation, out)
        # the choice, for scripts that go on with it (e.g. benchmarks/eval_real.sh pretrains it again)
        (out / SELECTED_FILE).write_text(json.dumps({"selected": selected, "splits": evaluation.splits}) + "\n")
    if errors:
        raise SweepError(f"{len(errors)} evaluation trial(s) failed ({', '.join(list(errors)[:4])}): "
                         f"{next(iter(errors.values()))}; the report in {out} lacks them: run again with --resume")
    return SweepResult(out=out, rows=rows, cells=cells, report=report, stopped_early=stopped,
                       seconds=time.perf_counter() - started, selected=selected)


