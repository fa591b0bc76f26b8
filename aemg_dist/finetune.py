"""`aemg finetune`: a pretrained encoder + one person's labeled recordings -> a personal decoder folder.

The evaluation's calibration recipe (evaluation/), applied to one subject at a 100 % budget:

1. the person's recordings: a prepared corpus, or a manifest whose recordings of that subject are
   prepared (harmonized) into a work folder first;
2. labeled windows tokenized with the event and token settings the encoder was pretrained with;
3. the person's windows split as a held-out fold (folds.subject_fold): per label, `test_percent` of the
   repetitions are kept aside and never used, the rest are the calibration windows;
4. strict statistics (heldout.py): normalization, noise floor and usable channels from the calibration
   windows only; every window of the person is renormalized and re-tokenized with them;
5. LP-FT of `aemg_finetune` (methods.py): with other subjects of the same dataset in the corpus, a source
   model on their windows adapted to the calibration windows (exactly an evaluation trial at 100 %); for a
   person alone, the linear probe and then fine-tuning on the calibration windows themselves;
6. the held-out slice scored (balanced accuracy, confusion matrix) and the decoder exported with the
   statistics of step 4, so `aemg predict` normalizes new recordings the way this model was trained.

A person whose electrode layout the pretraining never saw (a grid) needs nothing special: the encoder
reads electrode coordinates, not channel slots.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from aemg_dist.artifacts import RUN_CONFIG, TOKENIZE_CONFIG, TokenizeConfig, load_tokenize_config, run_export
from aemg_dist.config import ConfigError, load_config
from aemg_dist.data import tokenize_corpus
from aemg_dist.decoder import Decoder, DecoderConfig
from aemg_dist.evaluation.classifiers import FinetuneConfig
from aemg_dist.evaluation.data import load_labeled_windows
from aemg_dist.evaluation.folds import calibration_split, subject_fold
from aemg_dist.evaluation.heldout import heldout_view
from aemg_dist.evaluation.methods import AEMGFinetune, FoldContext
from aemg_dist.evaluation.td_lda import balanced_accuracy, macro_f1
from aemg_dist.model import ModelConfig
from aemg_dist.model.export import read_tokenize_settings
from aemg_dist.tokens import feature_names
from aemg_dist.windows import WindowConfig
from preprocessing.corpus import Corpus
from preprocessing.harmonize import HarmonizeConfig


@dataclass
class PersonalConfig:
    """Everything `aemg finetune` decides; saved in the decoder's provenance."""

    pretrained: str = ""  # an `aemg pretrain` run folder, or its export/
    subject: str = ""  # dataset/subject
    corpus: str = ""  # a prepared corpus holding the subject (and maybe other subjects of its dataset) ...
    manifest: str = ""  # ... or a dataset manifest; its recordings of the subject are prepared first
    data_root: str = ""  # with manifest: the folder holding the dataset's folder (default: beside the manifest)
    out: str = ""
    work: str = ""  # where the prepared corpus and windows go (default: a temporary folder, removed after)
    windows: WindowConfig = field(default_factory=lambda: WindowConfig(kind="labeled", length_s=0.5, stride_s=0.25,
                                                                       margin_s=0.25))
    train: FinetuneConfig = field(default_factory=FinetuneConfig)
    harmonize: HarmonizeConfig = field(default_factory=HarmonizeConfig)  # with manifest: how to prepare
    test_percent: float = 33.0  # of each label's repetitions kept aside and scored
    seed: int = 0
    max_tokens: int = 256
    other_subjects: bool = True  # the corpus's other subjects of the dataset as the source (the evaluation recipe)
    workers: int = 1  # 1 = in this process; 0 = Ray tasks on every local CPU

    def __post_init__(self) -> None:
        if self.windows.kind != "labeled":
            raise ValueError("finetune windows must be windows.kind=labeled")
        if not 0 < self.test_percent < 100:
            raise ValueError(f"test_percent must be in (0, 100), got {self.test_percent}")


@dataclass
class PersonalResult:
    out: Path
    balanced_accuracy: float
    macro_f1: float
    confusion: np.ndarray  # (K, K) rows true, columns predicted
    class_names: list[str]
    n_calib: int
    n_test: int
    recipe: str
    seconds: float


def finetune_personal(cfg: PersonalConfig, progress: bool = True) -> PersonalResult:
    started = time.perf_counter()
    if not (cfg.pretrained and cfg.subject and cfg.out) or bool(cfg.corpus) == bool(cfg.manifest):
        raise ConfigError("finetune needs pretrained, subject, out and one of corpus or manifest")
    if cfg.subject.count("/") != 1:
        raise ConfigError(f"subject must be dataset/subject, got {cfg.subject!r}")
    dataset, subject = cfg.subject.split("/")
    export, tokenize = pretrained_settings(cfg.pretrained)
    model_config = ModelConfig(**json.loads((export / "config.json").read_text())["model"])
    if model_config.n_features != len(feature_names(tokenize.tokens)):
        raise ConfigError(f"{export}: the model reads {model_config.n_features} token features but the token "
                          f"settings give {len(feature_names(tokenize.tokens))}")
    work = Path(cfg.work) if cfg.work else Path(tempfile.mkdtemp(prefix="aemg-finetune-"))
    try:
        corpus = _corpus(cfg, dataset, subject, work, progress)
        keys = [e.key for e in Corpus(corpus).entries if e.dataset == dataset
                and (e.subject == subject or cfg.other_subjects)]
        if not any(key.split("/")[1] == subject for key in keys):
            raise ConfigError(f"{corpus} has no recording of {cfg.subject}")
        windows_dir = work / "windows"
        shutil.rmtree(windows_dir, ignore_errors=True)
        tokenize_corpus(corpus, windows_dir, replace(tokenize, windows=cfg.windows), keys=keys, workers=cfg.workers,
                        progress=progress)
        data = load_labeled_windows(windows_dir, corpus, [dataset])[dataset]
        fold = subject_fold(data.table, dataset, subject, cfg.windows.length_s + cfg.windows.margin_s,
                            cfg.other_subjects)
        calib, test = calibration_split(fold, 100.0, cfg.seed, cfg.test_percent)
        view = heldout_view(data, fold.heldout_idx, calib, "strict")
        method = AEMGFinetune()
        ctx = FoldContext(data=data, fold=fold, train=cfg.train, max_tokens=cfg.max_tokens, model_config=model_config,
                          checkpoint=str(export), view=view)
        if fold.train_idx.size:
            recipe = f"source model on {np.unique(data.table.column('subject').take(fold.train_idx)).size} other " \
                     f"subject(s), adapted to the calibration windows"
            model = method.calibrated(ctx, method.source_model(ctx), calib, cfg.seed)
        else:  # the person alone: the calibration windows are the source
            recipe = "linear probe, then fine-tuning on the calibration windows"
            ctx = replace(ctx, fold=replace(fold, train_idx=calib))
            model = method.source_model(ctx)
        truth, pred = data.y[test], method.predict(ctx, model, test)
        confusion = np.zeros((ctx.n_classes, ctx.n_classes), dtype=np.int64)
        np.add.at(confusion, (truth, pred), 1)
        result = PersonalResult(out=Path(cfg.out), balanced_accuracy=balanced_accuracy(truth, pred),
                                macro_f1=macro_f1(truth, pred), confusion=confusion, class_names=data.class_names,
                                n_calib=int(calib.size), n_test=int(test.size), recipe=recipe, seconds=0.0)
        attrs = _device_attrs(Corpus(corpus), [k for k in keys if k.split("/")[1] == subject])
        stats = view.stats
        config = DecoderConfig(
            model=model_config, class_ids=[int(c) for c in data.class_labels], class_names=data.class_names,
            source_fs=float(attrs["source_fs"]), coords=attrs["canonical_coordinates"],
            center=stats.center.tolist(), scale=stats.scale.tolist(), floor=stats.floor.tolist(),
            channel_ok=stats.channel_ok.tolist(), notch_hz=list(attrs["notch_hz"]),
            harmonize=load_config(HarmonizeConfig, [Corpus(corpus).harmonize_config()], []),
            events=tokenize.events, tokens=tokenize.tokens, length_s=cfg.windows.length_s,
            hop_s=cfg.windows.stride_s or cfg.windows.length_s, max_tokens=cfg.max_tokens, units=attrs["units"],
            electrodes=attrs["electrodes"],
            provenance={"pretrained": str(cfg.pretrained), "subject": cfg.subject, "recipe": recipe,
                        "finetune": OmegaConf.to_container(OmegaConf.structured(cfg)),
                        "heldout": {"balanced_accuracy": result.balanced_accuracy, "macro_f1": result.macro_f1,
                                    "confusion": confusion.tolist(), "n_calib": result.n_calib,
                                    "n_test": result.n_test}})
        Decoder(model, config).save(cfg.out)
    finally:
        if not cfg.work:
            shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    return result


def pretrained_settings(path: str | Path) -> tuple[Path, TokenizeConfig]:
    """The export folder of a pretrained run (or the export given) and the token settings it was pretrained with: those
    the export recorded, else the tokenize.yaml of the run's token folder, else the defaults (checked against the
    model's feature count)."""
    path = Path(path)
    export = run_export(path)
    if not (export / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} is neither an `aemg pretrain` run nor its export/ (no model.safetensors)")
    recorded = read_tokenize_settings(export)
    if recorded is not None:
        return export, load_tokenize_config(recorded)
    run_config = export.parent / RUN_CONFIG
    if run_config.is_file():
        layer = Path(str(OmegaConf.load(run_config).data.tokens)) / TOKENIZE_CONFIG
        if layer.is_file():
            return export, load_tokenize_config(layer)
    return export, TokenizeConfig()


def _corpus(cfg: PersonalConfig, dataset: str, subject: str, work: Path, progress: bool) -> str:
    """The corpus to read: the one given, or the subject's recordings of the manifest prepared into `work`."""
    if cfg.corpus:
        return cfg.corpus
    from preprocessing.manifest import manifest_jobs, resolve_source
    from preprocessing.prepare import prepare

    (manifest, root), = resolve_source(cfg.manifest, cfg.data_root or None)
    if manifest.name != dataset:
        raise ConfigError(f"{cfg.manifest} describes dataset {manifest.name!r}, not {dataset!r} of {cfg.subject}")
    jobs = [j for j in manifest_jobs(manifest, root) if j.subject == subject]
    if not jobs:
        raise ConfigError(f"{cfg.manifest} has no recording of subject {subject!r} under {root}")
    report = prepare(jobs, work / "corpus.zarr", cfg.harmonize, workers=cfg.workers, progress=progress)
    if not report.ok:
        raise ConfigError(f"preparing {cfg.subject} failed: {report.failed[0][0]}: {report.failed[0][1]}")
    return str(work / "corpus.zarr")


def _device_attrs(corpus: Corpus, keys: list[str]) -> dict:
    """The subject's device as the corpus describes it; every recording must share it (one decoder, one device)."""
    attrs = [corpus.attrs(k) for k in keys]
    shared = ("source_fs", "canonical_coordinates", "units")
    for other, key in zip(attrs[1:], keys[1:]):
        differs = [name for name in shared if other[name] != attrs[0][name]]
        if differs:
            raise ConfigError(f"{key} differs from {keys[0]} in {differs}: one decoder serves one device")
    return attrs[0]


def summary(result: PersonalResult) -> str:
    """The held-out slice as the command prints it: accuracy and the confusion matrix."""
    width = max(len(n) for n in result.class_names)
    lines = [f"held-out slice ({result.n_test} windows; {result.n_calib} calibration windows; {result.recipe}): "
             f"balanced accuracy {result.balanced_accuracy:.3f}, macro-F1 {result.macro_f1:.3f}",
             "confusion (rows true, columns predicted):",
             " " * (width + 2) + " ".join(f"{i:>5d}" for i in range(len(result.class_names)))]
    lines += [f"{name:<{width}}  " + " ".join(f"{v:>5d}" for v in row) + f"   ({i})"
              for i, (name, row) in enumerate(zip(result.class_names, result.confusion))]
    return "\n".join(lines)
