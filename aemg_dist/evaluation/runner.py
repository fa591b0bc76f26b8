"""`aemg evaluate` / `aemg baselines`: LOSO folds x methods x calibration budgets x seeds.

1. Labeled windows: the corpus is tokenized once with `windows.kind=labeled` into OUT/windows,
   with the event and token settings of the checkpoints' pretraining tokens (so the encoder reads
   the features it was trained on). Every method then uses these rows: the AEMG models their
   tokens, the raw-signal baselines the corpus samples of the same spans.
2. Folds: leave-one-subject-out within each dataset (leave-one-session-out for a single-subject
   dataset), optionally restricted to some held-out subjects or `max_folds` per dataset. With a
   `splits` file (splits.py) a fold is a development or a test fold and `role` picks which to run:
   choices are made on development folds, numbers reported on test folds.
3. Pretraining guard by lineage: with `require_unseen` (the default), a fold is only scored with a
   checkpoint that never trained on the held-out subject. What a checkpoint trained on is read, not
   trusted: the recordings of its token folder's manifest minus its exclusions, and the same for every
   run it started from (`run.init_from`), matched by (dataset, subject). A checkpoint whose lineage
   never saw the fold's dataset (e.g. pretrained on another corpus) scores it as `unseen_dataset`.
   Several checkpoints can be given, e.g. pretrainings that each exclude a group of subjects, and each
   fold takes one that never saw it. Each row records the relation (`pretraining`: unseen_subject /
   unseen_dataset / seen).
4. Trials: one Ray task per fold (or in-process with workers=1) fits every method on the source
   subjects, then per (budget, seed) rebuilds the held-out subject's windows from its reference
   windows only (`normalization=strict`, heldout.py), adapts every method to the calibration windows
   and scores the test windows; results are appended to OUT/trials.jsonl as folds finish, so an
   interrupted evaluation re-run with the same config skips finished folds.
5. Report: summary.csv, report.md and plots (report.py).

Every path may be a URI (`s3://...`, see storage.py). OUT on an object store is staged in a local
folder: trials.jsonl is fetched at the start and uploaded whole after each fold (a crash loses at most
the folds in flight), the report at the end; OUT/windows is tokenized there directly. The fold tasks
read the corpus, the windows and the checkpoints' exports from their URIs, wherever they run.
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from aemg_dist import storage
from aemg_dist.artifacts import (RUN_CONFIG, RUN_EXPORT, TOKENS_MANIFEST, TokenizeConfig,
                                 load_tokenize_config, model_preset, read_tokens_manifest, recorded_token_settings)
from aemg_dist.config import (ConfigError, check_ranges, config_from_dict, config_layer, dotted, load_config,
                              save_config)
from aemg_dist.evaluation.classifiers import FinetuneConfig, source_steps
from aemg_dist.evaluation.data import DatasetWindows, load_labeled_windows
from aemg_dist.evaluation.folds import Fold, calibration_seconds, calibration_split, loso_folds, reference_split
from aemg_dist.evaluation.heldout import NORMALIZATIONS, heldout_view
from aemg_dist.evaluation.methods import AEMG_METHODS, BASELINE_METHODS, METHODS, FoldContext, NeuralMethod
from aemg_dist.evaluation.splits import ROLES, fold_role, load_splits
from aemg_dist.evaluation.td_lda import balanced_accuracy, macro_f1
from aemg_dist.model import ModelConfig
from aemg_dist.model.export import CheckpointError, check_inference, read_model_config
from aemg_dist.train import PretrainConfig
from aemg_dist.validate import claim, require_input, require_output
from aemg_dist.windows import WindowConfig
from preprocessing.corpus import Corpus

PROTOCOLS = ("loso",)
TRIALS_FILE = "trials.jsonl"
CONFIG_FILE = "evaluate.yaml"


@dataclass
class EvaluateConfig:
    corpus: str = ""
    out: str = "runs/evaluate"
    checkpoints: list[str] = field(default_factory=list)  # pretraining run folders (or their export/)
    protocol: str = "loso"
    budgets: list[float] = field(default_factory=lambda: [0.0, 1.0, 5.0, 10.0, 100.0])  # % of the subject's labels
    seeds: list[int] = field(default_factory=lambda: [0])  # calibration draws (and adaptation seeds)
    test_percent: float = 33.0  # of each held-out label's repetitions, scored at every budget
    # strict: the held-out subject's statistics (normalization, noise floor, channels) come from its reference
    # windows only; transductive: from its whole recordings, as the corpus stores them (heldout.py)
    normalization: str = "strict"
    reference_percent: float = 1.0  # at 0 %: the windows this budget would calibrate with, used without labels
    splits: str = ""  # YAML of development subjects per dataset (splits.py); the others are test subjects
    role: str = "all"  # which folds to run with a splits file: development, test or all
    methods: list[str] = field(default_factory=lambda: [*AEMG_METHODS, *BASELINE_METHODS])
    datasets: list[str] = field(default_factory=list)  # empty = every dataset of the corpus
    subjects: list[str] = field(default_factory=list)  # held-out "dataset/subject" (or session) to score; empty = all
    max_folds: int = 0  # per dataset, evenly spaced over its sorted held-out subjects; 0 = all
    require_unseen: bool = True  # refuse folds whose held-out subject the checkpoint's pretraining saw
    windows: WindowConfig = field(default_factory=lambda: WindowConfig(
        kind="labeled", length_s=0.5, stride_s=0.25, margin_s=0.25))
    windows_tokens: str = ""  # a labeled `aemg tokenize` output to use instead of OUT/windows
    train: FinetuneConfig = field(default_factory=FinetuneConfig)
    max_tokens: int = 256
    scratch_preset: str = "tiny"  # aemg_scratch's architecture when no checkpoint is given
    workers: int = 0  # 1 = in this process; 0 = Ray tasks on every local CPU; N = local Ray with N CPUs
    address: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
        unknown = sorted(set(self.train.source_steps) - set(METHODS))
        if unknown:
            raise ValueError(f"train.source_steps names unknown methods {unknown}; choose from {sorted(METHODS)}")
        check_ranges(self, budgets="[0, 100]", seeds="[0, inf)", test_percent="(0, 100)", reference_percent="(0, 100]",
                     max_folds="[0, inf)", max_tokens="[1, 16384]", workers="[0, 4096]")
        if not self.budgets or not self.seeds:
            raise ValueError(f"need at least one budget and one seed, got budgets={self.budgets}, seeds={self.seeds}")
        if self.windows.kind != "labeled":
            raise ValueError("evaluation windows must be windows.kind=labeled")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.role not in ROLES or (self.role != "all" and not self.splits):
            raise ValueError(f"role must be one of {ROLES} (development/test need a splits file), got {self.role!r}")

    @property
    def gap_s(self) -> float:
        """Least distance between calibration and test windows cut from one segment: a window plus the margin."""
        return self.windows.length_s + self.windows.margin_s


# ---------------------------------------------------------------- checkpoints and the pretraining guard

MAX_LINEAGE = 32  # stages followed through run.init_from before a loop is assumed


@dataclass(frozen=True)
class Checkpoint:
    """A pretraining run as evaluation sees it: where its weights are and which subjects its lineage trained on.

    `seen` is every (dataset, subject) whose windows reached the run or any run it started from
    (`run.init_from`, followed stage by stage): the recordings its token folder's manifest lists, minus its
    exclusions. Validation recordings count as seen (the validation loss read them)."""

    run: str
    export: str
    tokens: str
    seen: frozenset[tuple[str, str]]

    @classmethod
    def from_run(cls, path: str | Path, _depth: int = 0) -> "Checkpoint":
        """The run folder (a local path or a URI), or its export/."""
        path = storage.absolute(path)
        parent, name = posixpath.split(path.rstrip("/"))
        run = parent if name == RUN_EXPORT else path
        export, config = storage.join(run, RUN_EXPORT), storage.join(run, RUN_CONFIG)
        if not storage.exists(storage.join(export, "model.safetensors")) or not storage.exists(config):
            raise FileNotFoundError(f"{path} is not a finished `aemg pretrain` run (needs config.yaml and "
                                    "export/model.safetensors)")
        check_inference(export)  # a damaged or hostile export fails here, before any window is tokenized
        try:
            settings = load_config(PretrainConfig, [config])
        except ConfigError as err:
            raise CheckpointError(f"{config}: not the config of an `aemg pretrain` run ({err})") from None
        data = settings.data
        seen = set().union(*(_trained_on(str(folder), set(data.exclude_subjects), set(data.exclude_datasets), run)
                             for folder in data.token_folders))
        init_from = settings.run.init_from
        if init_from:  # stage 2 of two-stage training: it also holds what its stage 1 saw
            if _depth >= MAX_LINEAGE:
                raise ConfigError(f"{run}: run.init_from goes more than {MAX_LINEAGE} stages deep (a loop?)")
            try:
                seen |= cls.from_run(init_from, _depth + 1).seen
            except FileNotFoundError as err:
                raise ConfigError(f"{run} started from {init_from}, whose run cannot be read ({err}); the guard cannot "
                                  "tell which subjects it saw") from None
        return cls(run, export, str(data.tokens), frozenset(seen))

    @property
    def datasets(self) -> frozenset[str]:
        return frozenset(d for d, _ in self.seen)

    def relation(self, dataset: str, subject: str) -> str:
        """How pretraining relates to a held-out subject: unseen_dataset, unseen_subject or seen."""
        if dataset not in self.datasets:
            return "unseen_dataset"
        return "seen" if (dataset, subject) in self.seen else "unseen_subject"


def _trained_on(tokens: str, exclude_subjects: set[str], exclude_datasets: set[str], run: str) -> set[tuple[str, str]]:
    """(dataset, subject) of every recording in one of a pretraining's token folders that the exclusions keep."""
    try:
        recordings = read_tokens_manifest(tokens, "data.tokens")["recordings"]
    except FileNotFoundError:
        raise ConfigError(f"{run} was pretrained on {tokens}, which has no {TOKENS_MANIFEST} any more; the guard "
                          "cannot tell which subjects it saw") from None
    seen = set()
    for key in recordings:
        dataset, subject, _ = (key.split("/") + ["", ""])[:3]
        if dataset not in exclude_datasets and f"{dataset}/{subject}" not in exclude_subjects:
            seen.add((dataset, subject))
    return seen


def assign_checkpoints(checkpoints: list[Checkpoint], folds: list[tuple[str, str]],
                       require_unseen: bool) -> dict[tuple[str, str], Checkpoint]:
    """For each (dataset, held-out subject) the first checkpoint that never saw it (else the first one,
    when require_unseen is off). Raises ConfigError listing every fold no checkpoint can score."""
    chosen, uncovered = {}, []
    for fold in folds:
        clean = [c for c in checkpoints if c.relation(*fold) != "seen"]
        if clean or not require_unseen:
            chosen[fold] = (clean or checkpoints)[0]
        else:
            uncovered.append("/".join(fold))
    if uncovered:
        raise ConfigError(f"every checkpoint's lineage trained on the held-out subject of {len(uncovered)} fold(s): "
                          f"{uncovered[:6]}{' ...' if len(uncovered) > 6 else ''}. Pretrain with "
                          "data.exclude_subjects=[dataset/subject,...] (or data.exclude_datasets), give several "
                          "--checkpoint runs that together exclude every held-out subject, or set require_unseen=false")
    return chosen


def exclusion_groups(subjects: dict[str, list[str]], n_groups: int) -> list[list[str]]:
    """Split every dataset's subjects ({dataset: subjects}) into n_groups disjoint "dataset/subject"
    lists (round robin, in natural order). Pretraining once without each group gives, for every LOSO
    fold, a checkpoint that never saw its held-out subject, at n_groups pretrainings instead of one
    per fold. A single-subject dataset (leave-one-session-out) goes whole into one group, rotating
    across such datasets."""
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    natural = lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
    groups: list[list[str]] = [[] for _ in range(n_groups)]
    single = 0
    for dataset in sorted(subjects):
        members = sorted(set(subjects[dataset]), key=natural)
        if len(members) == 1:
            groups[single % n_groups].append(f"{dataset}/{members[0]}")
            single += 1
            continue
        for i, subject in enumerate(members):
            groups[i % n_groups].append(f"{dataset}/{subject}")
    return groups


# ---------------------------------------------------------------- labeled windows

def labeled_tokens(cfg: EvaluateConfig, checkpoints: list[Checkpoint], progress: bool = True) -> str:
    """OUT/windows (made here when missing) or cfg.windows_tokens, absolute: the labeled token rows of the corpus."""
    from aemg_dist.data import tokenize_corpus

    layers = sorted({storage.join(c.tokens, "tokenize.yaml") for c in checkpoints})
    if cfg.windows_tokens:
        windows = storage.absolute(cfg.windows_tokens)
        given = load_tokenize_config(storage.join(windows, "tokenize.yaml"))
        for layer in layers:  # the encoder must read tokens made the way it was pretrained on
            pretrained = load_tokenize_config(layer)
            for part in ("events", "tokens"):
                if getattr(pretrained, part) != getattr(given, part):
                    raise ConfigError(f"windows_tokens={windows} was tokenized with other {part} settings than the "
                                      f"checkpoint's tokens ({posixpath.dirname(layer)}): {getattr(given, part)} vs "
                                      f"{getattr(pretrained, part)}")
        return windows
    if len(layers) > 1:
        raise ConfigError(f"the checkpoints were pretrained on tokens from different folders {layers}; "
                          "evaluate them separately or give windows_tokens")
    tokenize = load_tokenize_config(*layers)
    tokenize = config_from_dict(TokenizeConfig, {**asdict(tokenize), "windows": asdict(cfg.windows)})
    out = storage.join(storage.absolute(cfg.out), "windows")
    manifest = storage.join(out, "tokens.json")
    if storage.exists(manifest):
        made = json.loads(storage.read_text(manifest))["config"]
        if "tokens" in made:  # a folder from before a token setting existed was made with its old value
            made["tokens"] = recorded_token_settings(made["tokens"])
        wanted = {k: v for k, v in asdict(tokenize).items() if k in made}
        if made != json.loads(json.dumps(wanted)):
            raise ConfigError(f"{out} was tokenized with other settings; delete it or choose another --out")
        return out
    tokenize_corpus(cfg.corpus, out, tokenize, workers=cfg.workers, address=cfg.address or None, progress=progress)
    return out


def select_folds(data: DatasetWindows, cfg: EvaluateConfig) -> list[Fold]:
    folds = loso_folds(data.table, data.dataset, cfg.gap_s)
    if cfg.subjects:
        folds = [f for f in folds if f"{data.dataset}/{f.held_out}" in cfg.subjects]
    if cfg.role != "all":
        splits = load_splits(cfg.splits)
        folds = [f for f in folds if fold_role(splits, data.dataset, f.held_out) == cfg.role]
    if cfg.max_folds and len(folds) > cfg.max_folds:
        folds = [folds[i] for i in np.linspace(0, len(folds) - 1, cfg.max_folds).round().astype(int)]
    return folds


# ---------------------------------------------------------------- one fold

@dataclass(frozen=True)
class FoldJob:
    dataset: str
    held_out: str
    checkpoint: str  # export folder, "" without AEMG methods
    pretraining: str  # unseen_subject / unseen_dataset / seen / "" (no checkpoint)


_DATA_CACHE: dict[tuple[str, str, str], DatasetWindows] = {}  # per process: a dataset is loaded once


def _dataset(tokens: str, corpus: str, dataset: str) -> DatasetWindows:
    key = (tokens, corpus, dataset)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one dataset at a time per process bounds memory
        _DATA_CACHE[key] = load_labeled_windows(tokens, corpus, [dataset])[dataset]
    return _DATA_CACHE[key]


def run_fold(job: FoldJob, cfg_dict: dict[str, Any], tokens: str) -> list[dict[str, Any]]:
    """Every method x budget x seed of one fold; returns one result dict per trial (runs as a Ray task).

    Each method is fitted once on the other subjects. Then, per (budget, seed), the held-out windows are
    rebuilt from that split's reference windows (`heldout_view`) and every method is adapted to the
    calibration windows and scored on the test windows of that view."""
    import torch

    fold_started = time.perf_counter()
    cfg = config_from_dict(EvaluateConfig, cfg_dict)
    # one thread: folds run side by side, and on a busy machine torch's extra threads make a step 10-20x slower
    torch.set_num_threads(1)
    # a URI export is fetched by the task itself (once per node): the driver's disk is not on every node
    checkpoint = str(storage.local_copy(job.checkpoint)) if job.checkpoint else ""
    data = _dataset(tokens, cfg.corpus, job.dataset)
    fold = next(f for f in loso_folds(data.table, job.dataset, cfg.gap_s) if f.held_out == job.held_out)
    ctx = FoldContext(data=data, fold=fold, train=cfg.train, max_tokens=cfg.max_tokens,
                      model_config=_scratch_config(cfg, checkpoint, data), checkpoint=checkpoint)
    held_out_kind = "session" if len(set(data.table.column("subject").to_pylist())) == 1 else "subject"
    role = fold_role(load_splits(cfg.splits), job.dataset, job.held_out) if cfg.splits else ""
    methods = {name: METHODS[name]() for name in cfg.methods}
    seconds = dict.fromkeys(methods, 0.0)
    bases, source_fit = {}, {}
    scored = source_sample(ctx)
    for name, method in methods.items():  # the other subjects only: no view, no held-out window
        started = time.perf_counter()
        bases[name] = method.source_model(ctx)
        seconds[name] += time.perf_counter() - started
        source_fit[name] = balanced_accuracy(data.y[scored], method.predict(ctx, bases[name], scored))
    results, view, view_reference = [], None, None
    for seed in cfg.seeds:
        for budget in cfg.budgets:
            calib, test = calibration_split(fold, budget, seed, cfg.test_percent)
            reference = reference_split(fold, budget, seed, cfg.test_percent, cfg.reference_percent)
            if view_reference is None or not np.array_equal(reference, view_reference):
                view, view_reference = heldout_view(data, fold.heldout_idx, reference, cfg.normalization), reference
            split_ctx = ctx.with_view(view)
            truth = data.y[test]
            for name, method in methods.items():
                started = time.perf_counter()
                model = method.calibrated(split_ctx, bases[name], calib, seed) if calib.size else bases[name]
                pred = method.predict(split_ctx, model, test)
                seconds[name] += time.perf_counter() - started
                confusion = np.zeros((ctx.n_classes, ctx.n_classes), dtype=np.int64)
                np.add.at(confusion, (truth, pred), 1)
                results.append({
                    "method": name, "dataset": job.dataset, "subject": job.held_out, "budget": budget, "seed": seed,
                    "balanced_accuracy": balanced_accuracy(truth, pred), "macro_f1": macro_f1(truth, pred),
                    "n_train": int(fold.train_idx.size + calib.size), "n_test": int(test.size),
                    "n_calib": int(calib.size), "pretraining": job.pretraining if name in AEMG_METHODS else "",
                    # how well the source model fits the windows it was trained on (the same for every trial of
                    # the method in this fold): tells a model that underfits the source from one that transfers worse
                    "source_accuracy": source_fit[name],
                    "source_steps": source_steps(name, cfg.train) if isinstance(method, NeuralMethod) else None,
                    # a neural method's adaptation steps (None: a refit classifier, or no calibration windows)
                    "calib_steps": getattr(model, "calibration_steps", None) if calib.size else None,
                    "calib_seconds_per_class": calibration_seconds(data.starts[calib], data.stops[calib],
                                                                   data.keys[calib], data.y[calib], data.fs),
                    "normalization": cfg.normalization, "role": role,
                    "held_out_kind": held_out_kind, "classes": data.class_names, "confusion": confusion.tolist(),
                })
    fold_seconds = time.perf_counter() - fold_started
    for r in results:  # a method's time for the whole fold (its source model, every budget and seed), and the fold's
        r["seconds"], r["fold_seconds"] = seconds[r["method"]], fold_seconds
    return results


SOURCE_SCORE_WINDOWS = 4096  # a balanced accuracy to about ±0.01; scoring every source window costs a pass over them


def source_sample(ctx: FoldContext) -> np.ndarray:
    """The source windows a fold's source models are scored on: all of them, or SOURCE_SCORE_WINDOWS drawn once per
    fold (the same for every method), in index order."""
    if ctx.source.size <= SOURCE_SCORE_WINDOWS:
        return ctx.source
    rng = np.random.default_rng(ctx.seed("source-score"))
    return np.sort(rng.choice(ctx.source, SOURCE_SCORE_WINDOWS, replace=False))


def _scratch_config(cfg: EvaluateConfig, checkpoint: str, data: DatasetWindows) -> ModelConfig:
    """aemg_scratch's architecture: the checkpoint's, else the `scratch_preset` for these token features."""
    if checkpoint:
        return read_model_config(checkpoint)
    n_features = int(data.tokens[0].features.shape[1])  # (T, F) even for a window without tokens
    return ModelConfig(**{**model_preset(cfg.scratch_preset), "n_features": n_features})


# ---------------------------------------------------------------- the whole evaluation

@dataclass
class EvaluationResult:
    out: Path | str  # a local folder, or the URI given as out
    rows: list[dict[str, Any]]
    report: str
    seconds: float
    folds_run: int  # folds computed by this call (the others were already in trials.jsonl)


def evaluate(cfg: EvaluateConfig, progress: bool = True) -> EvaluationResult:
    """Run every fold (skipping those already in OUT/trials.jsonl) and write the report."""
    started = time.perf_counter()
    if not cfg.corpus:
        raise ConfigError("give the corpus (--corpus CORPUS.zarr)")
    cfg = replace(cfg, corpus=storage.absolute(cfg.corpus))  # the caller's config stays as given
    # every input is checked before anything is tokenized or written: the corpus, each checkpoint (its export's
    # config and weights header), the given windows, the splits file and the output folder
    Corpus(cfg.corpus)
    checkpoints = [Checkpoint.from_run(c) for c in cfg.checkpoints]
    needs_checkpoint = sorted(set(cfg.methods) & set(AEMG_METHODS))
    if needs_checkpoint and not checkpoints:
        raise ConfigError(f"methods {needs_checkpoint} need a pretrained checkpoint (--checkpoint RUN); "
                          "`aemg baselines` runs the others")
    if cfg.windows_tokens:
        require_input(cfg.windows_tokens, "windows_tokens")
    if cfg.splits:
        load_splits(cfg.splits)
    out = storage.absolute(cfg.out)
    require_output(out, "--out")
    files = storage.StagedFolder(out)  # trials.jsonl, evaluate.yaml and the report
    try:
        for name in (TRIALS_FILE, CONFIG_FILE):
            files.fetch(name)
        _check_resumable(cfg, files.local)
        with claim(out, "--out"):
            rows, jobs, report = _evaluate_folds(cfg, checkpoints, files, progress)
    finally:
        files.close()
    return EvaluationResult(out=files.path, rows=rows, report=storage.join(files.path, report),
                            seconds=time.perf_counter() - started, folds_run=len(jobs))


def _evaluate_folds(cfg: EvaluateConfig, checkpoints: list[Checkpoint], files: storage.StagedFolder,
                    progress: bool) -> tuple[list[dict[str, Any]], list[FoldJob], str]:
    """Tokenize the labeled windows, run the folds not yet in trials.jsonl and write the report: (rows, the fold
    jobs run now, the report's file name)."""
    from tqdm import tqdm

    from aemg_dist.evaluation.report import write_report
    from aemg_dist.parallel import ensure_shared, map_unordered

    tokens = labeled_tokens(cfg, checkpoints, progress)
    folds, jobs = _fold_jobs(cfg, tokens, checkpoints, files.local)
    save_config(cfg, files.local / CONFIG_FILE)  # once the folds are known: a refused evaluation writes none
    files.sync(CONFIG_FILE)
    if len(jobs) < len(folds):
        print(f"resuming: {len(folds) - len(jobs)} fold(s) already in {storage.join(files.path, TRIALS_FILE)}, "
              f"{len(jobs)} to run", flush=True)
    if jobs:  # else no Ray to start
        # the fold tasks read these wherever they run (OUT/windows was checked when it was tokenized)
        ensure_shared([("--corpus", cfg.corpus), *(("--checkpoint", c.run) for c in checkpoints),
                       *([("windows_tokens", cfg.windows_tokens)] if cfg.windows_tokens else [])],
                      cfg.workers, cfg.address or None)
        with (files.local / TRIALS_FILE).open("a") as trials:
            results = map_unordered(run_fold, jobs, asdict(cfg), tokens, workers=cfg.workers,
                                    address=cfg.address or None)
            for fold_rows in tqdm(results, total=len(jobs), desc="folds", unit="fold", disable=not progress):
                # one line per fold: a crash never leaves half a fold that looks finished
                trials.write(json.dumps({"trials": fold_rows}) + "\n")
                trials.flush()
                files.sync(TRIALS_FILE)  # an object store cannot append: the whole file again, one upload
    rows = [r for r in _read_trials(files.local) if (r["dataset"], r["subject"]) in set(folds)]
    report = write_report(rows, files.local, cfg)
    files.sync(*sorted(p.name for p in files.local.iterdir() if p.is_file() and not p.name.startswith(".")))
    return rows, jobs, report.name


def _fold_jobs(cfg: EvaluateConfig, tokens: str, checkpoints: list[Checkpoint],
               out: Path) -> tuple[list[tuple[str, str]], list[FoldJob]]:
    """Every selected (dataset, held-out) fold, and the jobs of those not yet in out/trials.jsonl, each with the
    checkpoint that may score it."""
    datasets = load_labeled_windows(tokens, cfg.corpus, cfg.datasets or None)
    selected = [(name, data, f) for name, data in datasets.items() for f in select_folds(data, cfg)]
    folds = [(name, f.held_out) for name, _, f in selected]
    # the subject a fold holds out: itself, or the single subject of a leave-one-session-out dataset
    subject_of = {(name, f.held_out): heldout_subject(data, f) for name, data, f in selected}
    if not folds:
        raise ConfigError(f"no fold to evaluate: subjects {cfg.subjects} match none of {sorted(datasets)}")
    by_subject = assign_checkpoints(checkpoints, sorted(set(subject_of.values())), cfg.require_unseen) \
        if checkpoints else {}
    assigned = {fold: by_subject[subject_of[fold]] for fold in folds} if checkpoints else {}
    done = {(r["dataset"], r["subject"]) for r in _read_trials(out, drop_partial=True)}
    jobs = [FoldJob(d, s, assigned[(d, s)].export if assigned else "",
                    assigned[(d, s)].relation(*subject_of[(d, s)]) if assigned else "")
            for d, s in folds if (d, s) not in done]
    return folds, jobs  # the windows loaded here are dropped: each fold task loads its own dataset


def heldout_subject(data: DatasetWindows, fold: Fold) -> tuple[str, str]:
    """(dataset, subject) a fold holds out: its subject, or the one subject of a leave-one-session-out fold."""
    subjects = sorted(set(data.table.column("subject").take(fold.heldout_idx).to_pylist()))
    if len(subjects) != 1:
        raise ValueError(f"fold {data.dataset}/{fold.held_out} holds out several subjects {subjects}")
    return data.dataset, subjects[0]


# what may differ between evaluations whose rows one report combines (everything else decides the folds, windows,
# budgets and statistics, and must match)
COMBINABLE = ("out", "checkpoints", "methods", "train", "workers", "address", "windows_tokens", "max_folds", "subjects",
              "datasets", "require_unseen", "scratch_preset")


def combine(runs: list[str | Path], out: str | Path) -> EvaluationResult:
    """One report over the trials of several `aemg evaluate` outputs of the same protocol (e.g. AEMG checkpoints
    evaluated apart from baselines measured once). Settings that decide folds, windows, budgets or statistics must
    match (ConfigError naming the first that differs); a method may come from one run only."""
    from aemg_dist.evaluation.report import write_report

    started = time.perf_counter()
    if len(runs) < 2:
        raise ConfigError("give at least two evaluation folders to combine")
    configs, rows, source = [], [], {}
    for run in map(Path, runs):
        if not (run / CONFIG_FILE).is_file() or not (run / TRIALS_FILE).is_file():
            raise ConfigError(f"{run} is not an `aemg evaluate` output (needs {CONFIG_FILE} and {TRIALS_FILE})")
        cfg = load_config(EvaluateConfig, [run / CONFIG_FILE], [])
        if configs:
            first, now = asdict(configs[0]), asdict(cfg)
            differs = [k for k in now if k not in COMBINABLE and now[k] != first[k]]
            if differs:
                raise ConfigError(f"{run} was evaluated with other {differs[0]} than {runs[0]} "
                                  f"({now[differs[0]]!r} vs {first[differs[0]]!r}); its rows are not comparable")
        configs.append(cfg)
        mine = _read_trials(run)
        for method in sorted({r["method"] for r in mine}):
            if method in source:
                raise ConfigError(f"method {method} is in both {source[method]} and {run}: combine each method once")
            source[method] = str(run)
        rows += mine
    require_output(out, "--out")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sources.json").write_text(json.dumps({"runs": [str(r) for r in runs], "methods": source}, indent=1))
    report = write_report(rows, out, configs[0])
    return EvaluationResult(out=out, rows=rows, report=str(report), seconds=time.perf_counter() - started, folds_run=0)


def _read_trials(out: Path, drop_partial: bool = False) -> list[dict[str, Any]]:
    """Trial rows of OUT/trials.jsonl: one line per finished fold. A line cut by a crash is ignored
    (its fold runs again); with drop_partial it is also removed from the file, so appending is safe."""
    path = out / TRIALS_FILE
    rows: list[dict[str, Any]] = []
    lines = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.extend(json.loads(line)["trials"])
            lines.append(line)
        except (ValueError, KeyError):
            continue
    if drop_partial and path.is_file():
        staging = path.with_suffix(".tmp")
        staging.write_text("".join(line + "\n" for line in lines))
        staging.replace(path)
    return rows


# settings added with a default other than the behaviour before them: the value an older folder's trials had
BEFORE_THE_SETTING = {"train.probe_features": "window"}
# settings only these methods read: a folder without them may continue whatever the setting says
READ_BY = {"train.probe_features": {"aemg_probe"}, "train.head_features": {"aemg_finetune", "aemg_scratch"}}


def _check_resumable(cfg: EvaluateConfig, out: Path) -> None:
    """An OUT with trials may only be continued with the same config (else results would mix). The saved config is
    read through the schema: a setting added since it was written takes its default, or its value in
    BEFORE_THE_SETTING where the default is not the old behaviour."""
    saved = out / CONFIG_FILE
    if not (out / TRIALS_FILE).is_file() or not saved.is_file():
        return
    written = dotted(config_layer(saved))
    older = [f"{key}={value}" for key, value in BEFORE_THE_SETTING.items() if key not in written]
    before = dotted(json.loads(json.dumps(asdict(load_config(EvaluateConfig, [saved], older)))))
    now = dotted(json.loads(json.dumps(asdict(cfg))))
    differs = sorted(k for k in now if k not in ("workers", "address") and before.get(k) != now[k]
                     and READ_BY.get(k, set(cfg.methods)) & set(cfg.methods))
    if differs:
        raise ConfigError(f"{out} holds trials of an evaluation with other settings ({', '.join(differs)}); "
                          "choose another --out or delete it")
