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
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from omegaconf import OmegaConf
from ray import tune

from aemg_dist import storage
from aemg_dist.config import ConfigError, check_ranges, config_from_dict, load_config, save_config
from aemg_dist.shards import read_tokens_manifest
from aemg_dist.evaluation.methods import AEMG_METHODS
from aemg_dist.evaluation.runner import (Checkpoint, EvaluateConfig, FoldJob, heldout_subject, assign_checkpoints,
                                         exclusion_groups, labeled_tokens, run_fold, select_folds)
from aemg_dist.model.export import CONFIG_FILE as EXPORT_CONFIG_FILE
from aemg_dist.train import PretrainConfig, last_metrics, load_pretrain_config, pretrain
from aemg_dist.validate import claim, require_output
from preprocessing.corpus import Corpus

CONFIG_FILE = "sweep.yaml"
SELECTED_FILE = "selected.json"  # the configuration selected on the development subjects
EXECUTIONS_FILE = "executions.jsonl"
# set by the sweep itself for every run; a grid over them would break the folds or the run folders
RESERVED_KEYS = ("data.tokens", "data.exclude_subjects", "data.exclude_datasets", "run.out", "dist.ray")
RUNTIME_KEYS = ("address",)  # the settings a --resume may change


@dataclass
class TrialResources:
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        check_ranges(self, cpus="[0, inf)", gpus="[0, inf)")


@dataclass
class ResourcesConfig:
    # a pretraining trial only drives its Ray Train job, whose workers ask for dist.num_workers x
    # dist.cpus_per_worker themselves: a CPU held by the trial would sit idle
    pretrain: TrialResources = field(default_factory=lambda: TrialResources(cpus=0.0))
    evaluate: TrialResources = field(default_factory=TrialResources)  # one fold x budget (one torch thread)


def _tune_resources(resources: TrialResources) -> dict[str, float]:
    # Tune refuses a trial that asks for nothing at all; a trial that only drives a Train job asks for one byte
    # of memory, so it holds no CPU the job's workers could use
    return {"CPU": resources.cpus, "GPU": resources.gpus} if resources.cpus or resources.gpus else {"memory": 1}


@dataclass
class ConcurrencyConfig:
    pretrain: int = 1  # Ray Train jobs at once; 0 = as many as the cluster fits
    evaluate: int = 0  # evaluation trials at once; 0 = as many as the cluster fits

    def __post_init__(self) -> None:
        check_ranges(self, pretrain="[0, inf)", evaluate="[0, inf)")


@dataclass
class AshaConfig:
    """Early stopping of pretraining configurations (ASHA over the checkpoints' reported metrics).

    A stop at a rung ends the trial and its Ray Train job; the configuration is reported as stopped early and
    not evaluated (tests/test_sweep.py, slow). max_t is one step past the last step: a stop at max_t, while the
    Train job was writing its final checkpoint and export, once hung the sweep."""

    enabled: bool = False
    # reported at every checkpoint; val_loss needs run.val_every to divide run.checkpoint_every. The masked
    # loss grows with log(codebook size): compare configurations of one codebook size, or use recon_loss
    metric: str = "val_loss"
    mode: str = "min"
    grace_period: int = 100  # pretraining steps before a configuration can be stopped
    reduction_factor: int = 2

    def __post_init__(self) -> None:
        check_ranges(self, grace_period="[1, inf)", reduction_factor="[2, inf)")
        if self.mode not in ("min", "max"):
            raise ValueError(f"asha.mode must be min or max, got {self.mode!r}")


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


def check_evaluation_unset(evaluation: EvaluateConfig, driver: str) -> None:
    """A sweep or scaling run sets its evaluation's checkpoints (its own runs) and out (its own folder)."""
    if evaluation.checkpoints or evaluation.out != EvaluateConfig.out:
        raise ValueError(f"evaluation.checkpoints and evaluation.out are set by the {driver} (its runs, out)")


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

FoldKey = tuple[str, str, tuple[str, str]]  # (dataset, held-out subject or session, its (dataset, subject))


@dataclass
class Configuration:
    name: str  # codebook_size-64_mask_ratio-0.3: a folder and trial name
    values: dict[str, Any]  # column name (the key's last part, unless ambiguous) -> value


@dataclass
class PretrainRun:
    key: str  # <configuration>-g<group>
    configuration: str
    group: int
    config: PretrainConfig


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


def pretrain_runs(configs: dict[str, PretrainConfig], out: Path, groups: list[list[str]]) -> list[PretrainRun]:
    """Every (configuration, group) pretraining: group g's run also leaves out the subjects of group g."""
    runs = []
    for name, config in configs.items():
        for g, excluded in enumerate(groups):
            run = config_from_dict(PretrainConfig, asdict(config))
            key = f"{name}-g{g}"
            run.data.tokens, run.run.out = storage.absolute(config.data.tokens), str(out / "pretrain" / key)
            run.data.exclude_subjects = sorted(set(config.data.exclude_subjects) | set(excluded))
            runs.append(PretrainRun(key, name, g, run))
    return runs


# ---------------------------------------------------------------- trials (run on Ray workers)

def log_execution(out: str | Path, event: str, phase: str, trial: str) -> None:
    """One line of OUT/executions.jsonl (short appends from several processes stay whole lines)."""
    line = json.dumps({"time": time.time(), "event": event, "phase": phase, "trial": trial, "pid": os.getpid()})
    with open(Path(out) / EXECUTIONS_FILE, "a") as f:
        f.write(line + "\n")


def exported(run_out: Path) -> bool:
    """Whether a pretraining run has exported its model (export_inference writes its config last)."""
    return (run_out / "export" / EXPORT_CONFIG_FILE).is_file()


def pretrain_trial(config: dict[str, Any], runs: dict[str, dict[str, Any]], out: str) -> None:
    """Tune trial of phase 1: drive one pretraining (a Ray Train job), or reuse its finished export."""
    from ray.tune.integration.ray_train import TuneReportCallback

    key = config["key"]
    run = config_from_dict(PretrainConfig, runs[key])
    folder = Path(run.run.out)
    # a run that exported is finished: its trial ran again because Tune's saved state predates the finish (a
    # killed driver) or the trial was cut off after it, so the training is not redone
    done = exported(folder)
    log_execution(out, "reuse" if done else "start", "pretrain", key)
    if not done:
        pretrain(run, callbacks=[TuneReportCallback()])
    tune.report({**last_metrics(folder / "metrics.csv"), "exported": 1})


def evaluate_trial(config: dict[str, Any], trials: dict[str, dict[str, Any]], evaluation: dict[str, Any],
                   tokens: str, out: str) -> None:
    """Tune trial of phase 2: one fold at one budget, every method and seed; rows to its own file."""
    key = config["key"]
    spec = trials[key]
    path = Path(spec["rows"])
    # a rows file is a finished attempt whose finish Tune's saved state may not hold (a killed driver): report it
    reused = path.is_file()
    log_execution(out, "reuse" if reused else "start", "evaluate", key)
    if reused:
        rows = json.loads(path.read_text())
    else:
        rows = run_fold(FoldJob(**spec["job"]), {**evaluation, "budgets": [spec["budget"]]}, tokens)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps(rows))
        staging.replace(path)  # whole or absent: a half-written file never looks finished
    means: dict[str, list[float]] = {}
    for r in rows:
        for metric in ("balanced_accuracy", "macro_f1"):
            means.setdefault(f"{r['method']}/{metric}", []).append(r[metric])
    tune.report({name: sum(v) / len(v) for name, v in means.items()})


def trial_name(trial: Any) -> str:
    """Trial names and folders are the sweep's keys (configuration, group, fold, budget), not Tune's hashes."""
    return trial.config["key"]


class ExecutionLog(tune.Callback):
    """Logs each trial Tune records as finished (or errored) to OUT/executions.jsonl."""

    def __init__(self, out: str, phase: str):
        self.out, self.phase = out, phase

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log_execution(self.out, "finish", self.phase, trial.config["key"])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log_execution(self.out, "error", self.phase, trial.config["key"])


# ---------------------------------------------------------------- the driver

class SweepError(RuntimeError):
    """Trials failed; the message names them and the first line of an error."""


class SweepInterrupted(RuntimeError):
    """Tune stopped before every trial finished (Ctrl-C); `--resume` continues."""


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
    from tuning.sweep_report import write_sweep_report

    started = time.perf_counter()
    cfg = absolute_paths(cfg, "sweep")
    out = Path(cfg.out)
    grid = configurations(cfg.grid)
    configs = pretrain_configs(cfg, grid)
    tokens = storage.absolute(next(iter(configs.values())).data.tokens)  # one folder: data.tokens is not a grid key
    with driving(cfg, out, tokens, cfg.evaluation.corpus, resume, "sweep"):
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


@contextmanager
def driving(cfg: Any, out: Path, tokens: str, corpus: str, resume: bool, what: str) -> Iterator[None]:
    """What a sweep or a scaling run does before its work: check its out folder (writable; a fresh run needs an
    unused one, --resume the same settings) and its inputs (the tokens its runs pretrain on, the corpus it evaluates
    on, "" for none), all before anything is written; then hold out, save the config and log the start."""
    require_output(out, "out")
    check_resumable(cfg, out / CONFIG_FILE, resume, what)
    read_tokens_manifest(tokens, "data.tokens")
    if corpus:
        Corpus(corpus)
    with claim(out, "out"):
        save_config(cfg, out / CONFIG_FILE)
        log_execution(out, "resume" if resume else "begin", what.split()[0], "")
        yield


def absolute_paths(cfg: Any, what: str) -> Any:
    """A sweep or scaling config with out, pretrain_config and the evaluation's inputs made absolute; out must be
    a local or mounted path (Tune's state and the run folders are written there)."""
    if storage.is_uri(cfg.out):
        raise ConfigError(f"out={cfg.out}: a {what} writes its results to a local or mounted path")
    return replace(cfg, out=str(Path(cfg.out).resolve()), pretrain_config=str(Path(cfg.pretrain_config).resolve()),
                   evaluation=absolute_inputs(cfg.evaluation))


def absolute_inputs(evaluation: EvaluateConfig) -> EvaluateConfig:
    """The evaluation's input paths made absolute (URIs as given): trials run in other working directories, and a
    --resume started elsewhere must name the same files."""
    return replace(evaluation, **{k: storage.absolute(getattr(evaluation, k)) if getattr(evaluation, k) else ""
                                  for k in ("corpus", "windows_tokens", "splits")})


def evaluated_folds(evaluation: EvaluateConfig, tokens: str, pretrain_groups: int,
                    progress: bool) -> tuple[str, list[FoldKey], list[list[str]]]:
    """(labeled windows folder, every fold evaluated, the pretrain_groups groups of their subjects that the
    pretrainings leave out). The windows are tokenized into evaluation.out/windows with the settings of the
    tokens the runs pretrain on (the runs need not exist yet)."""
    from aemg_dist.evaluation.data import load_labeled_windows

    windows = labeled_tokens(evaluation, [Checkpoint("", "", tokens, frozenset())], progress)  # absolute, or a URI
    datasets = load_labeled_windows(windows, evaluation.corpus, evaluation.datasets or None)
    folds = [(name, f.held_out, heldout_subject(data, f)) for name, data in datasets.items()
             for f in select_folds(data, evaluation)]
    if not folds:
        raise ConfigError(f"no fold to evaluate: evaluation.subjects {evaluation.subjects} match no held-out subject")
    held_out: dict[str, list[str]] = {}
    for _, _, (dataset, subject) in folds:
        held_out.setdefault(dataset, []).append(subject)
    groups = exclusion_groups(held_out, pretrain_groups)
    if not all(groups):
        raise ConfigError(f"pretrain_groups={pretrain_groups} is more than the "
                          f"{sum(len(set(s)) for s in held_out.values())} evaluated subjects")
    return windows, folds, groups


def pretrain_phase(runs: list[PretrainRun], out: Path, resume: bool, progress: bool, resources: TrialResources,
                   max_concurrent: int, asha: AshaConfig | None = None) -> None:
    """Phase 1: one Tune trial per run (a Ray Train job), at most max_concurrent at once (0: as many as fit)."""
    trainable = tune.with_parameters(pretrain_trial, runs={r.key: asdict(r.config) for r in runs}, out=str(out))
    scheduler = None
    if asha and asha.enabled:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="step", metric=asha.metric, mode=asha.mode,
                                  # one past the last step: ASHA stops a trial that reaches max_t, and a stop must
                                  # not race the run's final checkpoint and export
                                  max_t=max(r.config.optim.max_steps for r in runs) + 1,
                                  grace_period=asha.grace_period, reduction_factor=asha.reduction_factor)
    results = run_phase("pretrain", tune.with_resources(trainable, _tune_resources(resources)), [r.key for r in runs],
                        out, resume, progress, max_concurrent_trials=max_concurrent or None, scheduler=scheduler)
    failed = [k for k, error in results.items() if error]
    if failed:
        # no evaluation before every configuration is pretrained: phase 2's trials are fixed once it starts
        raise SweepError(f"{len(failed)} pretraining trial(s) failed ({', '.join(failed[:4])}): "
                         f"{results[failed[0]]}; fix the cause and run again with --resume (logs: {out / 'tune'})")


def evaluate_phase(evaluation: EvaluateConfig, grid: list[Configuration], runs: list[PretrainRun],
                   folds: list[FoldKey], windows: str, out: Path, resume: bool, progress: bool,
                   resources: TrialResources, max_concurrent: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Phase 2: one Tune trial per (configuration, fold, budget). Returns (the rows of every finished trial, each
    tagged with its configuration; {trial key: error line} of the failed ones)."""
    specs = evaluation_trials(evaluation, grid, runs, folds, out)
    errors: dict[str, str] = {}
    if specs:
        scoring = tune.with_parameters(evaluate_trial, trials=specs, evaluation=asdict(evaluation),
                                       tokens=windows, out=str(out))
        # reused actors keep run_fold's per-process dataset cache: a dataset is loaded once per actor
        results = run_phase("evaluate", tune.with_resources(scoring, _tune_resources(resources)), list(specs), out,
                            resume, progress, reuse_actors=True, max_concurrent_trials=max_concurrent or None)
        errors = {k: e for k, e in results.items() if e}
    rows = [{**r, "configuration": spec["configuration"]} for spec in specs.values() if Path(spec["rows"]).is_file()
            for r in json.loads(Path(spec["rows"]).read_text())]
    return rows, errors


def evaluation_trials(evaluation: EvaluateConfig, grid: list[Configuration], runs: list[PretrainRun],
                      folds: list[FoldKey], out: Path) -> dict[str, dict[str, Any]]:
    """{trial key: spec} for every (configuration, fold, budget); each fold takes the configuration's run that
    never saw its subject (the evaluation guard, require_unseen)."""
    specs = {}
    subjects = sorted({subject for _, _, subject in folds})
    for configuration in grid:
        checkpoints = [Checkpoint.from_run(r.config.run.out) for r in runs if r.configuration == configuration.name]
        chosen = assign_checkpoints(checkpoints, subjects, evaluation.require_unseen)
        for dataset, fold, subject in folds:
            job = FoldJob(dataset, fold, chosen[subject].export, chosen[subject].relation(*subject))
            for budget in evaluation.budgets:
                key = f"{configuration.name}-{dataset}-{fold}-b{budget:g}"
                specs[key] = {"job": asdict(job), "budget": budget, "configuration": configuration.name,
                              "rows": str(out / "trials" / f"{key}.json")}
    return specs


def run_phase(phase: str, trainable: Any, keys: list[str], out: Path, resume: bool, progress: bool,
              **tune_options: Any) -> dict[str, str]:
    """Fit (or restore and continue) one phase's Tune experiment: {trial key: error line, "" if it finished}."""
    path = out / "tune" / phase
    grid = {"key": tune.grid_search(keys)}
    if resume and tune.Tuner.can_restore(str(path)):
        # errored trials start again (a pretraining from its last checkpoint); finished ones keep their results.
        # Without a readable experiment state (a driver killed before Tune first saved it) Tune starts the
        # experiment over from the grid, which tuner.pkl does not hold: give it again
        tuner = tune.Tuner.restore(str(path), trainable, param_space=grid, resume_unfinished=True,
                                   restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=grid,
            tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                        **tune_options),
            run_config=tune.RunConfig(name=phase, storage_path=str(out / "tune"), verbose=1 if progress else 0,
                                      callbacks=[ExecutionLog(str(out), phase)]))
    results = tuner.fit()
    # the result grid of an interrupted run holds only the trials the search had created by then, so count the
    # saved trial states against every key
    status = {t.config["key"]: t.status for t in tune.ExperimentAnalysis(str(path)).trials}
    unfinished = [k for k in keys if status.get(k) not in ("TERMINATED", "ERROR")]
    if unfinished:
        raise SweepInterrupted(f"interrupted during {phase} with {len(unfinished)} trial(s) unfinished; finished "
                               f"trials are kept in {path}: run the same command with --resume to continue")
    # a trial that errored before reporting has no config in its result: its folder is named by its key
    return {Path(r.path).name: str(r.error).strip().splitlines()[-1] if r.error else "" for r in results}


def check_resumable(cfg: Any, saved: Path, resume: bool, what: str = "sweep") -> None:
    """A fresh run needs an unused folder; --resume needs the settings saved in it (else results would mix)."""
    out = saved.parent
    started = (out / "tune").is_dir()
    if started and not resume:
        raise ConfigError(f"{out} holds a {what} already: continue it with --resume, or choose another out")
    if not resume or not saved.is_file():
        return
    before = OmegaConf.to_container(OmegaConf.load(saved))
    now = json.loads(json.dumps(asdict(cfg)))
    differs = sorted(k for k in now if k not in RUNTIME_KEYS and before.get(k) != now[k])
    if differs:
        raise ConfigError(f"{out} holds a {what} with other settings ({', '.join(differs)}); resume it with the "
                          "same config, or choose another out")
