"""The machinery every Ray Tune driver of this project shares (`aemg sweep`, `aemg scaling run`): pretraining and
evaluation phases as Tune experiments of idempotent trials, their run folders and execution log, resources and
concurrency, and what a driver checks before it starts or resumes. tuning/sweep.py describes the phases.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf
from ray import tune

from aemg_dist import storage
from aemg_dist.config import ConfigError, check_ranges, config_from_dict, config_path, save_config
from aemg_dist.artifacts import RUN_EXPORT, last_metrics, read_tokens_manifest
from aemg_dist.evaluation.runner import (Checkpoint, EvaluateConfig, FoldJob, heldout_subject, assign_checkpoints,
                                         exclusion_groups, labeled_tokens, run_fold, select_folds)
from aemg_dist.model.export import CONFIG_FILE as EXPORT_CONFIG_FILE
from aemg_dist.train import PretrainConfig, pretrain
from aemg_dist.validate import claim, require_output
from preprocessing.corpus import Corpus

RUNTIME_KEYS = ("address",)  # the settings a --resume may change


EXECUTIONS_FILE = "executions.jsonl"
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


def check_evaluation_unset(evaluation: EvaluateConfig, driver: str) -> None:
    """A sweep or scaling run sets its evaluation's checkpoints (its own runs) and out (its own folder)."""
    if evaluation.checkpoints or evaluation.out != EvaluateConfig.out:
        raise ValueError(f"evaluation.checkpoints and evaluation.out are set by the {driver} (its runs, out)")


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
    return (run_out / RUN_EXPORT / EXPORT_CONFIG_FILE).is_file()


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
    tune.report({**last_metrics(folder), "exported": 1})


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

class SweepInterrupted(RuntimeError):
    """Tune stopped before every trial finished (Ctrl-C); `--resume` continues."""


class SweepError(RuntimeError):
    """Trials failed; the message names them and the first line of an error."""


@contextmanager
def driving(cfg: Any, out: Path, config_file: str, tokens: str, corpus: str, resume: bool, what: str) -> Iterator[None]:
    """What a sweep or a scaling run does before its work: check its out folder (writable; a fresh run needs an
    unused one, --resume the same settings) and its inputs (the tokens its runs pretrain on, the corpus it evaluates
    on, "" for none), all before anything is written; then hold out, save the config as OUT/config_file and log the
    start."""
    require_output(out, "out")
    check_resumable(cfg, out / config_file, resume, what)
    read_tokens_manifest(tokens, "data.tokens")
    if corpus:
        Corpus(corpus)
    with claim(out, "out"):
        save_config(cfg, out / config_file)
        log_execution(out, "resume" if resume else "begin", what.split()[0], "")
        yield


def absolute_paths(cfg: Any, what: str) -> Any:
    """A sweep or scaling config with out, pretrain_config and the evaluation's inputs made absolute; out must be
    a local or mounted path (Tune's state and the run folders are written there)."""
    if storage.is_uri(cfg.out):
        raise ConfigError(f"out={cfg.out}: a {what} writes its results to a local or mounted path")
    return replace(cfg, out=str(Path(cfg.out).resolve()), pretrain_config=str(Path(config_path(cfg.pretrain_config)).resolve()),
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
