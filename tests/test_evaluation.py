"""Evaluation end to end on a tiny synthetic corpus: fold bookkeeping, identical windows across
methods, the pretraining guard, TD+LDA against a direct reimplementation, resume and the CLI."""

from __future__ import annotations

import csv
import io
import json
import tempfile
import zlib
from dataclasses import asdict, replace
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from aemg_dist import cli
from aemg_dist.config import ConfigError, load_config, save_config
from aemg_dist.artifacts import read_token_table
from aemg_dist.data import tokenize_corpus
from aemg_dist.evaluation import calibration_split, loso_folds
from aemg_dist.evaluation.folds import reference_split
from aemg_dist.evaluation.methods import METHODS
from aemg_dist.evaluation.runner import (CONFIG_FILE, SOURCE_SCORE_WINDOWS, TRIALS_FILE, Checkpoint, EvaluateConfig,
                                         _check_resumable, evaluate, exclusion_groups, labeled_tokens, source_sample)
from aemg_dist.train import load_pretrain_config, pretrain, split_tables
from preprocessing.corpus import Corpus
from preprocessing.prepare import prepare
from preprocessing.synthetic import SyntheticConfig, synthetic_jobs
from test_evaluation_core import _td_loop

TINY = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny.yaml"
HELD_OUT = ["synth_myo/s01", "synth_myo/s02", "synth_myo/s03"]
BUDGETS = [0, 10, 100]
FAST = ["windows.length_s=0.2", "windows.stride_s=0.1", "windows.margin_s=0.1", "train.base_steps=15",
        "train.adapt_steps=5", "train.pretrain_steps=5", "train.batch_size=16", "budgets=[0,10,100]", "seeds=[0,1]"]
DESIGN_COLUMNS = ["method", "dataset", "subject", "budget", "seed", "balanced_accuracy", "macro_f1", "n_train", "n_test"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny corpus, pretraining tokens, and two tiny pretrainings: one without the synth_myo subjects, one with all."""
    root = tmp_path_factory.mktemp("evaluation")
    assert prepare(synthetic_jobs(SyntheticConfig(scale="tiny")), root / "corpus.zarr", workers=1, progress=False).ok
    tokenize_corpus(root / "corpus.zarr", root / "tokens", workers=1, progress=False)
    runs = {}
    for name, excluded in (("unseen", HELD_OUT), ("all", [])):
        cfg = load_pretrain_config(TINY, [f"data.tokens={root / 'tokens'}", f"run.out={root / name}", "dist.ray=false",
                                          "optim.max_steps=20", "data.batch_size=16", "run.log_every=10",
                                          f"data.exclude_subjects=[{','.join(excluded)}]"])
        pretrain(cfg)
        runs[name] = root / name
    return root, runs


def _config(root: Path, out: Path, *overrides: str) -> EvaluateConfig:
    return load_config(EvaluateConfig, None, [f"corpus={root / 'corpus.zarr'}", f"out={out}", "datasets=[synth_myo]",
                                              *FAST, *overrides])


@pytest.fixture(scope="module")
def full_run(setup, ray_local):
    """Every method, LOSO on the three synth_myo subjects, as Ray tasks."""
    root, runs = setup
    cfg = _config(root, root / "results", f"checkpoints=[{runs['unseen']}]", "workers=2")
    return root, evaluate(cfg, progress=False)


def test_pretraining_never_sees_excluded_subjects(setup):
    root, runs = setup
    cfg = load_pretrain_config(runs["unseen"] / "config.yaml")
    train, val = split_tables(cfg.data)
    seen = {f"{d}/{s}" for d, s in zip(train.column("dataset").to_pylist() + val.column("dataset").to_pylist(),
                                        train.column("subject").to_pylist() + val.column("subject").to_pylist())}
    assert not seen & set(HELD_OUT) and "synth_myo/s01" not in seen and "synth_3dc/s01" in seen


def test_end_to_end_fold_bookkeeping(full_run):
    root, result = full_run
    rows = result.rows
    assert len(rows) == len(METHODS) * 3 * len(BUDGETS) * 2  # methods x folds x budgets x seeds
    windows = read_token_table(result.out / "windows")
    folds = {f.held_out: f for f in loso_folds(windows, "synth_myo")}
    subjects = np.asarray(windows.column("subject").to_pylist())
    for r in rows:
        fold = folds[r["subject"]]
        assert r["subject"] not in set(subjects[fold.train_idx])  # no subject in both train and test
        calib, test = calibration_split(fold, r["budget"], r["seed"])
        assert (r["n_calib"], r["n_test"], r["n_train"]) == (calib.size, test.size, fold.train_idx.size + calib.size)
        # the checkpoint left out every synth_myo subject: its lineage never saw the dataset
        assert r["pretraining"] == ("unseen_dataset" if r["method"].startswith("aemg_") and r["method"] != "aemg_scratch"
                                    else "")
    # identical windows across methods: same counts and the same test labels (confusion row sums)
    by_trial: dict[tuple, set] = {}
    for r in rows:
        signature = (r["n_train"], r["n_test"], r["n_calib"], tuple(np.sum(r["confusion"], axis=1)))
        by_trial.setdefault((r["subject"], r["budget"], r["seed"]), set()).add(signature)
    assert all(len(s) == 1 for s in by_trial.values())
    for (subject, budget, seed), signatures in by_trial.items():  # budgets nested: calibration grows
        if budget > 0:
            assert next(iter(signatures))[2] >= next(iter(by_trial[(subject, 0, seed)]))[2]
    with (result.out / "summary.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:9] == DESIGN_COLUMNS and len(list(reader)) == len(rows)
    report = (result.out / "report.md").read_text()
    assert "aemg_finetune" in report and "Wilcoxon" in report
    for name in ("low_label.png", "confusion_synth_myo.png", "evaluate.yaml"):
        assert (result.out / name).stat().st_size > 0, name
    for r in rows:
        assert 0 <= r["balanced_accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1
        # neural methods adapt for train.adapt_steps=5 steps; refit classifiers and 0 % record none
        neural = r["method"] not in ("td_lda", "aemg_probe") and r["n_calib"] > 0
        assert r["calib_steps"] == (5 if neural else None), r
    # the source model's fit is measured once per (method, fold): every trial of it carries the same number
    source_fit: dict[tuple, set] = {}
    for r in rows:
        source_fit.setdefault((r["method"], r["subject"]), set()).add(r["source_accuracy"])
    assert all(len(v) == 1 and 0 <= next(iter(v)) <= 1 for v in source_fit.values())


def test_early_stopping_chooses_calibration_steps_per_budget(setup, tmp_path, monkeypatch):
    """With train.adapt_check every calibrated neural model adapts for a checked step count in [0, adapt_steps]; a
    label with one calibration window holds nothing back, so a 1 % budget of one window per label adapts for the
    steps the calibration size gives (adapt_epochs), unchecked."""
    from aemg_dist.evaluation import methods

    root, _ = setup
    checks, original = [], methods.early_stopped_steps

    def recorded(*args, **kwargs):
        checks.append((kwargs["fit"], kwargs["check"], original(*args, **kwargs)))
        return checks[-1][2]

    monkeypatch.setattr(methods, "early_stopped_steps", recorded)
    rows = evaluate(_config(root, tmp_path, "methods=[cnn]", "workers=1", "subjects=[synth_myo/s01]", "seeds=[0]",
                            "budgets=[0,1,100]", "train.adapt_steps=20", "train.adapt_check=0.3",
                            "train.adapt_check_every=5", "train.adapt_epochs=2", "train.adapt_min_steps=3"),
                    progress=False).rows
    steps = {r["budget"]: (r["calib_steps"], r["n_calib"]) for r in rows}
    assert steps[0.0] == (None, 0)
    classes = len(rows[0]["classes"])
    assert steps[1.0] == (3, classes)  # round(2 x n_classes / 8) < 3 (8 = calib_share x batch_size 16)
    chosen, n_calib = steps[100.0]
    most = min(20, round(2 * n_calib / 8))  # scored before the first step, every 5 steps and after the last
    assert n_calib > 3 * classes and most > 5 and chosen in {*range(0, most, 5), most}
    (fit, check, returned), = checks  # 100 % only; what it returned is what the model adapted for
    assert returned == chosen and fit.size + check.size < n_calib and not set(fit) & set(check)


def _weighted_lda_predict(X, y, w, Xt):
    """Weighted LDA written out directly (class means, pooled covariance, discriminants)."""
    classes = np.unique(y)
    n, k = len(y), len(classes)
    means = np.array([np.average(X[y == c], axis=0, weights=w[y == c]) for c in classes])
    cov = np.zeros((X.shape[1], X.shape[1]))
    for i in range(n):
        d = X[i] - means[np.searchsorted(classes, y[i])]
        cov += w[i] * np.outer(d, d)
    cov /= w.sum() * (n - k) / n
    inv = np.linalg.pinv(cov)
    prior = np.array([w[y == c].sum() for c in classes]) / w.sum()
    scores = [Xt @ inv @ m - 0.5 * m @ inv @ m + np.log(p) for m, p in zip(means, prior)]
    return classes[np.argmax(np.stack(scores, axis=1), axis=1)]


def _direct_balanced_accuracy(truth, pred):
    return np.mean([np.mean(pred[truth == c] == c) for c in np.unique(truth)])


def _strict_heldout(corpus: Corpus, table, heldout: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The held-out windows as the strict protocol should give them, written out directly: each recording's
    stored z-score undone, then the median / 1.4826 MAD of the distinct samples of the reference windows."""
    keys, starts = table.column("key").to_pylist(), table.column("start").to_numpy()
    stops = table.column("stop").to_numpy()

    def source(i):
        norm = corpus.attrs(keys[i])["normalization"]
        return corpus.read(keys[i], starts[i], stops[i]).astype(np.float64) * norm["scale"] + norm["center"]

    samples = {}
    for i in reference:
        for t, value in zip(range(starts[i], stops[i]), source(i)):
            samples[(keys[i], t)] = value
    pooled = np.array(list(samples.values()))
    center = np.median(pooled, axis=0)
    scale = 1.4826 * np.median(np.abs(pooled - center), axis=0)
    return np.stack([(source(i) - center) / scale for i in heldout]).astype(np.float32)


def test_td_lda_matches_a_direct_reimplementation(full_run):
    root, result = full_run
    windows = read_token_table(result.out / "windows")
    corpus = Corpus(root / "corpus.zarr")
    keep = np.flatnonzero((np.asarray(windows.column("dataset").to_pylist()) == "synth_myo")
                          & (windows.column("label").to_numpy() >= 0))
    table = windows.take(keep)
    raw = np.stack([corpus.read(k, s, e) for k, s, e in zip(table.column("key").to_pylist(),
                                                            table.column("start").to_pylist(),
                                                            table.column("stop").to_pylist())])
    features, labels = _td_loop(raw, 0.01), table.column("label").to_numpy()
    expected = {(r["subject"], r["budget"], r["seed"]): r["balanced_accuracy"] for r in result.rows if r["method"] == "td_lda"}
    for fold in loso_folds(table, "synth_myo", gap_s=0.3):
        # the source model (LDA on the other subjects' windows, unweighted) scored on those windows
        source = fold.train_idx
        fitted = _weighted_lda_predict(features[source], labels[source], np.ones(source.size), features[source])
        recorded = {r["source_accuracy"] for r in result.rows if r["method"] == "td_lda" and r["subject"] == fold.held_out}
        assert len(recorded) == 1
        assert recorded.pop() == pytest.approx(_direct_balanced_accuracy(labels[source], fitted), abs=1e-4)
        for budget in BUDGETS:
            calib, test = calibration_split(fold, budget, 1)
            reference = reference_split(fold, budget, 1)
            heldout = fold.heldout_idx
            strict = features.copy()  # the held-out windows renormalized from the reference windows only
            strict[heldout] = _td_loop(_strict_heldout(corpus, table, heldout, reference), 0.01)
            rows = np.concatenate([fold.train_idx, calib])
            w = np.ones(rows.size)
            if calib.size:
                w[fold.train_idx.size:] = fold.train_idx.size / calib.size  # calib_share 0.5: equal total weight
            pred = _weighted_lda_predict(strict[rows], labels[rows], w, strict[test])
            assert _direct_balanced_accuracy(labels[test], pred) == pytest.approx(expected[(fold.held_out, budget, 1)],
                                                                                    abs=1e-4)


def test_guard_refuses_a_checkpoint_that_saw_the_subject(setup, tmp_path):
    root, runs = setup
    with pytest.raises(ConfigError, match="synth_myo/s01"):
        evaluate(_config(root, tmp_path / "a", f"checkpoints=[{runs['all']}]", "methods=[aemg_probe]", "workers=1"),
                 progress=False)
    # two checkpoints: each fold takes the one that never saw it
    rows = evaluate(_config(root, tmp_path / "b", f"checkpoints=[{runs['all']},{runs['unseen']}]",
                            "methods=[aemg_probe]", "workers=1", "budgets=[0]"), progress=False).rows
    assert {r["pretraining"] for r in rows} == {"unseen_dataset"}
    rows = evaluate(_config(root, tmp_path / "c", f"checkpoints=[{runs['all']}]", "methods=[aemg_probe]", "workers=1",
                            "budgets=[0]", "require_unseen=false"), progress=False).rows
    assert {r["pretraining"] for r in rows} == {"seen"}


def test_probe_reads_the_features_it_is_told_to(setup, tmp_path):
    root, runs = setup
    scores = {}
    for kind in ("window", "layers"):
        rows = evaluate(_config(root, tmp_path / kind, f"checkpoints=[{runs['unseen']}]", "methods=[aemg_probe]",
                                "workers=1", "budgets=[0,10]", f"train.probe_features={kind}"), progress=False).rows
        scores[kind] = {(r["subject"], r["budget"]): r["balanced_accuracy"] for r in rows}
    assert scores["window"].keys() == scores["layers"].keys()
    assert scores["window"] != scores["layers"]
    with pytest.raises(ValueError, match="probe_features"):
        _config(root, tmp_path / "bad", f"checkpoints=[{runs['unseen']}]", "train.probe_features=tokens")


def _pretrain(out: Path, tokens: Path, *overrides: str) -> Path:
    pretrain(load_pretrain_config(TINY, [f"data.tokens={tokens}", f"run.out={out}", "dist.ray=false",
                                         "optim.max_steps=5", "data.batch_size=16", "run.log_every=5", *overrides]))
    return out


def test_guard_follows_the_lineage_of_a_two_stage_run(setup, tmp_path):
    """A stage-2 run that excludes the held-out subjects but starts from a stage 1 that saw them is refused."""
    root, runs = setup
    stage2 = _pretrain(tmp_path / "stage2", root / "tokens", f"run.init_from={runs['all'] / 'export'}",
                       f"data.exclude_subjects=[{','.join(HELD_OUT)}]")
    cfg = _config(root, tmp_path / "eval", f"checkpoints=[{stage2}]", "methods=[aemg_probe]", "workers=1")
    with pytest.raises(ConfigError, match="lineage trained on the held-out subject.*synth_myo/s0"):
        evaluate(cfg, progress=False)
    # a stage 2 from a stage 1 that never saw s01, itself trained on s02 and s03: s01 is an unseen subject
    clean = _pretrain(tmp_path / "clean", root / "tokens", f"run.init_from={runs['unseen'] / 'export'}",
                      "data.exclude_subjects=[synth_myo/s01]")
    rows = evaluate(_config(root, tmp_path / "ok", f"checkpoints=[{clean}]", "methods=[aemg_probe]", "workers=1",
                            "budgets=[0]", "subjects=[synth_myo/s01]"), progress=False).rows
    assert {r["pretraining"] for r in rows} == {"unseen_subject"}


def test_a_checkpoint_from_another_corpus_scores_unseen_dataset(setup, tmp_path):
    """Pretrained on tokens of a corpus without synth_myo (no exclusion in its config): scored as unseen_dataset."""
    root, _ = setup
    corpus = Corpus(root / "corpus.zarr")
    foreign = tmp_path / "foreign-tokens"
    tokenize_corpus(root / "corpus.zarr", foreign, keys=[k for k in corpus.keys() if not k.startswith("synth_myo/")],
                    workers=1, progress=False)
    run = _pretrain(tmp_path / "foreign", foreign)
    rows = evaluate(_config(root, tmp_path / "eval", f"checkpoints=[{run}]", "methods=[aemg_probe]", "workers=1",
                            "budgets=[0]", "subjects=[synth_myo/s01]", f"windows_tokens={root / 'results' / 'windows'}"),
                    progress=False).rows
    assert rows and {r["pretraining"] for r in rows} == {"unseen_dataset"}


def test_resume_runs_only_missing_folds(setup, tmp_path):
    root, _ = setup
    cfg = _config(root, tmp_path, "methods=[td_lda]", "workers=1")
    first = evaluate(cfg, progress=False).rows
    trials = tmp_path / TRIALS_FILE
    lines = trials.read_text().splitlines()
    assert len(lines) == 3  # one line per fold
    dropped = json.loads(lines[-1])["trials"][0]["subject"]
    trials.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # a crash cut the last fold's line
    second = evaluate(_config(root, tmp_path, "methods=[td_lda]", "workers=1"), progress=False).rows
    lines = trials.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["trials"][0]["subject"] == dropped  # only that fold ran again
    key = lambda r: (r["subject"], r["budget"], r["seed"])
    assert sorted((key(r), r["balanced_accuracy"]) for r in first) == sorted((key(r), r["balanced_accuracy"]) for r in second)
    # an OUT written before a setting existed continues (the setting's default is the old behaviour)
    saved = tmp_path / "evaluate.yaml"
    written = saved.read_text()
    assert "  adapt_check: 0.0\n" in written
    saved.write_text(written.replace("  adapt_check: 0.0\n", ""))
    assert evaluate(_config(root, tmp_path, "methods=[td_lda]", "workers=1"), progress=False).rows == second
    saved.write_text(written.replace("  adapt_check: 0.0\n", "  adapt_check: 0.3\n"))  # a different value does not
    with pytest.raises(ConfigError, match="other settings"):
        evaluate(_config(root, tmp_path, "methods=[td_lda]", "workers=1"), progress=False)
    # a setting only other methods read does not stop a folder from continuing
    saved.write_text(written.replace("  probe_features: layers\n", "  probe_features: window\n"))
    assert evaluate(_config(root, tmp_path, "methods=[td_lda]", "workers=1"), progress=False).rows == second
    saved.write_text(written)
    with pytest.raises(ConfigError, match="other settings"):
        evaluate(_config(root, tmp_path, "methods=[td_lda]", "workers=1", "test_percent=50"), progress=False)


def test_an_older_folder_is_read_with_the_value_a_setting_had_before_it_existed(tmp_path):
    """train.probe_features came with a default (layers) other than the behaviour before it (window)."""
    probe = load_config(EvaluateConfig, None, ["corpus=c.zarr", f"out={tmp_path}", "methods=[aemg_probe]"])
    (tmp_path / TRIALS_FILE).write_text("")
    save_config(probe, tmp_path / CONFIG_FILE)
    written = (tmp_path / CONFIG_FILE).read_text()
    (tmp_path / CONFIG_FILE).write_text(written.replace("  probe_features: layers\n", ""))
    with pytest.raises(ConfigError, match=r"other settings \(train.probe_features\)"):
        _check_resumable(probe, tmp_path)
    _check_resumable(replace(probe, train=replace(probe.train, probe_features="window")), tmp_path)


def test_a_uri_out_is_staged_uploaded_per_fold_and_resumed(tiny_corpus, tmp_path, monkeypatch):
    """Corpus, OUT and windows_tokens on fsspec's in-memory filesystem (in-process folds: workers=1)."""
    from aemg_dist import storage
    from aemg_dist.evaluation import runner

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where OUT is staged
    base = f"memory://{tmp_path.name}"
    storage.upload(tiny_corpus, f"{base}/corpus.zarr")
    overrides = [f"corpus={base}/corpus.zarr", "datasets=[synth_myo]", *FAST, "methods=[td_lda]", "workers=1"]
    config = lambda out, *more: load_config(EvaluateConfig, None, [*overrides, f"out={out}", *more])
    real_run_fold, calls = runner.run_fold, []

    def crash_on_second_fold(*args):
        calls.append(args[0].held_out)
        if len(calls) == 2:
            raise RuntimeError("node lost")
        return real_run_fold(*args)

    monkeypatch.setattr(runner, "run_fold", crash_on_second_fold)
    with pytest.raises(RuntimeError, match="node lost"):
        evaluate(config(f"{base}/results"), progress=False)
    trials = storage.read_text(f"{base}/results/{TRIALS_FILE}").splitlines()
    assert len(trials) == 1 and json.loads(trials[0])["trials"][0]["subject"] == calls[0]  # uploaded after fold 1
    assert not storage.exists(f"{base}/results/report.md") and not list(tmp_path.glob("aemg-stage-*"))
    monkeypatch.setattr(runner, "run_fold", real_run_fold)

    result = evaluate(config(f"{base}/results"), progress=False)
    assert result.folds_run == 1 and result.out == f"{base}/results"  # resumed from the trials on the URI
    assert [json.loads(line)["trials"][0]["subject"] for line in
            storage.read_text(f"{base}/results/{TRIALS_FILE}").splitlines()] == calls
    summary = list(csv.DictReader(io.StringIO(storage.read_text(f"{base}/results/summary.csv"))))
    assert len(summary) == len(result.rows) == 2 * len(BUDGETS) * 2  # folds x budgets x seeds
    assert "td_lda" in storage.read_text(result.report) and storage.exists(f"{base}/results/low_label.png")
    assert storage.exists(f"{base}/results/windows/tokens.json") and not list(tmp_path.glob("aemg-stage-*"))
    assert evaluate(config(f"{base}/results"), progress=False).folds_run == 0
    with pytest.raises(ConfigError, match="other settings"):  # the saved evaluate.yaml is fetched too
        evaluate(config(f"{base}/results", "test_percent=50"), progress=False)
    again = evaluate(config(f"{base}/again", f"windows_tokens={base}/results/windows"), progress=False)
    assert sorted((r["subject"], r["budget"], r["seed"], r["balanced_accuracy"]) for r in again.rows) == \
        sorted((r["subject"], r["budget"], r["seed"], r["balanced_accuracy"]) for r in result.rows)
    assert not storage.exists(f"{base}/again/windows")  # the given windows were used, not made again


def test_cli_baselines_and_errors(setup, tmp_path, capsys):
    root, runs = setup
    argv = ["baselines", "--corpus", str(root / "corpus.zarr"), "--out", str(tmp_path / "cli"), "--methods", "td_lda",
            "--datasets", "synth_myo", "--budgets", "0,100", "--workers", "1", "--quiet", *FAST[:3]]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "td_lda" in out and "summary.csv" in out
    rows = list(csv.DictReader((tmp_path / "cli" / "summary.csv").open()))
    assert Counter(r["budget"] for r in rows) == {"0.0": 3, "100.0": 3}
    bad = ["evaluate", "--checkpoint", str(tmp_path / "missing"), "--corpus", str(root / "corpus.zarr"),
           "--out", str(tmp_path / "bad"), "--workers", "1"]
    assert cli.main(bad) == 2
    assert "not a finished `aemg pretrain` run" in capsys.readouterr().err
    assert cli.main(["baselines", "--corpus", str(root / "corpus.zarr"), "--out", str(tmp_path / "x"),
                     "--methods", "aemg_probe", "--workers", "1"]) == 2
    assert "need a pretrained checkpoint" in capsys.readouterr().err


def test_each_neural_method_trains_its_own_source_steps(setup, tmp_path, monkeypatch):
    from aemg_dist.evaluation import methods

    root, runs = setup
    trained, real_train = [], methods.train_classifier

    def count(model, inputs, y, source, calib, steps, *args, **kwargs):
        if not calib.size:  # the source model (calibration passes its windows)
            trained.append((type(model).__name__, steps))
        return real_train(model, inputs, y, source, calib, steps, *args, **kwargs)

    monkeypatch.setattr(methods, "train_classifier", count)
    cfg = _config(root, tmp_path / "steps", "methods=[aemg_scratch,cnn,td_lda]", "budgets=[0]", "seeds=[0]",
                  "subjects=[synth_myo/s01]", "workers=1", "train.source_steps.cnn=7")
    rows = evaluate(cfg, progress=False).rows
    assert {r["method"]: r["source_steps"] for r in rows} == {"aemg_scratch": 15, "cnn": 7, "td_lda": None}
    assert sorted(trained) == [("AEMGClassifier", 15), ("RawCNN", 7)]
    with pytest.raises(ConfigError, match="unknown methods"):
        _config(root, tmp_path / "bad", "train.source_steps.cnnn=7")


def test_every_shipped_evaluation_config_loads_and_names_known_methods(tmp_path):
    # unknown keys or methods, or a length below 1, raise ConfigError
    configs = {path.name: load_config(EvaluateConfig, [path], [f"corpus={tmp_path / 'c.zarr'}", f"out={tmp_path}"])
               for path in (Path(__file__).resolve().parents[1] / "configs" / "evaluate").glob("*.yaml")}
    assert set(configs) >= {"demo.yaml", "real.yaml"}
    assert all(set(cfg.train.source_steps) <= set(METHODS) for cfg in configs.values())
    # the shared datasets' recipe gives every method that trains on the source subjects its own length
    assert set(configs["real.yaml"].train.source_steps) == set(METHODS) - {"td_lda", "aemg_probe"}


def test_source_models_are_scored_on_at_most_a_fixed_sample_of_their_windows():
    def context(source: np.ndarray) -> SimpleNamespace:
        return SimpleNamespace(source=source, seed=lambda *parts: zlib.crc32("/".join(parts).encode()))

    small = np.arange(0, 2 * SOURCE_SCORE_WINDOWS, 2)[:SOURCE_SCORE_WINDOWS]
    assert source_sample(context(small)) is small
    large = np.arange(3, 3 + 5 * SOURCE_SCORE_WINDOWS, 2)
    sample = source_sample(context(large))
    assert sample.size == SOURCE_SCORE_WINDOWS and np.all(np.diff(sample) > 0) and np.isin(sample, large).all()
    assert np.array_equal(sample, source_sample(context(large)))  # every method of the fold sees the same windows
    assert sample.max() > large[SOURCE_SCORE_WINDOWS]  # drawn over the whole source, not its first windows


def test_exclusion_groups_cover_every_subject_once():
    subjects = {"a": ["s10", "s2", "s1", "s3"], "b": ["x"], "c": ["y"], "d": ["p", "q", "r"]}
    groups = exclusion_groups(subjects, 2)
    assert groups[0] == ["a/s1", "a/s3", "b/x", "d/p", "d/r"] and groups[1] == ["a/s2", "a/s10", "c/y", "d/q"]
    flat = [s for g in groups for s in g]
    assert sorted(flat) == sorted(f"{d}/{s}" for d, ss in subjects.items() for s in ss)  # each exactly once
    with pytest.raises(ValueError):
        exclusion_groups(subjects, 0)


def test_guard_for_a_leave_one_session_out_dataset():
    """A single-subject dataset's folds hold out sessions; the guard checks the subject they belong to."""
    import pyarrow as pa

    from aemg_dist.evaluation.data import DatasetWindows
    from aemg_dist.evaluation.runner import Checkpoint, heldout_subject, assign_checkpoints

    table = pa.table({"dataset": ["md"] * 4, "subject": ["1"] * 4, "session": ["d1", "d1", "d2", "d2"],
                      "label": [0, 1, 0, 1], "label_name": ["a", "b", "a", "b"], "rep": [-1] * 4,
                      "key": ["md/1/d1"] * 2 + ["md/1/d2"] * 2, "start": [0, 100, 0, 100],
                      "stop": [50, 150, 50, 150], "fs": [1000.0] * 4})
    data = DatasetWindows("md", table, "")
    fold = loso_folds(table, "md")[0]
    assert fold.held_out == "d1" and heldout_subject(data, fold) == ("md", "1")
    unseen = Checkpoint("a", "a/export", "t", frozenset({("md", "2"), ("other", "1")}))
    seen = Checkpoint("b", "b/export", "t", frozenset({("md", "1")}))
    assert assign_checkpoints([seen, unseen], [("md", "1")], True)[("md", "1")] is unseen
    assert unseen.relation("md", "1") == "unseen_subject" and unseen.relation("xx", "1") == "unseen_dataset"
    with pytest.raises(ConfigError, match="md/1"):
        assign_checkpoints([seen], [("md", "1")], True)


def test_report_combines_evaluations_of_the_same_protocol(setup, tmp_path):
    from aemg_dist.evaluation.runner import combine

    root, runs = setup
    baselines = evaluate(_config(root, tmp_path / "baselines", "methods=[td_lda]", "workers=1"), progress=False).rows
    aemg = evaluate(_config(root, tmp_path / "aemg", f"checkpoints=[{runs['unseen']}]", "methods=[aemg_probe]",
                            "workers=1"), progress=False).rows
    result = combine([tmp_path / "baselines", tmp_path / "aemg"], tmp_path / "both")
    assert len(result.rows) == len(baselines) + len(aemg)
    report = (tmp_path / "both" / "report.md").read_text()
    assert "aemg_probe vs td_lda" in report and "| td_lda |" in report
    with pytest.raises(ConfigError, match="method td_lda is in both"):
        combine([tmp_path / "baselines", tmp_path / "baselines"], tmp_path / "twice")
    evaluate(_config(root, tmp_path / "other", "methods=[td_lda]", "workers=1", "budgets=[0,10]"), progress=False)
    with pytest.raises(ConfigError, match="other budgets"):
        combine([tmp_path / "aemg", tmp_path / "other"], tmp_path / "mixed")
    assert cli.main(["report", str(tmp_path / "baselines"), str(tmp_path / "aemg"), "--out", str(tmp_path / "c")]) == 0


def test_folds_of_one_role(setup, capsys):
    root, _ = setup
    splits = Path(__file__).resolve().parents[1] / "configs" / "splits" / "synthetic.yaml"
    argv = ["folds", "--corpus", str(root / "corpus.zarr"), "--groups", "1", "--group", "0", "--splits", str(splits)]
    assert cli.main([*argv, "--role", "development"]) == 0
    excluded = capsys.readouterr().out.strip().split("=", 1)[1].strip("[]").split(",")
    assert excluded == ["synth_3dc/s01", "synth_bipolar4/s01", "synth_hdgrid/s01", "synth_myo/s01"]
    assert cli.main([*argv, "--role", "test"]) == 0
    assert "synth_myo/s02" in capsys.readouterr().out
    assert cli.main(argv) == 2  # --splits without --role


def test_windows_tokenized_unlike_the_checkpoints_tokens_are_refused(setup, tmp_path):
    root, runs = setup
    other = tmp_path / "windows"
    from aemg_dist.artifacts import TokenizeConfig
    from aemg_dist.tokens import TokenConfig
    from aemg_dist.windows import WindowConfig

    tokenize_corpus(root / "corpus.zarr", other, TokenizeConfig(tokens=TokenConfig(window_summary=False),
                                                                windows=WindowConfig(kind="labeled", length_s=0.2,
                                                                                     stride_s=0.1, margin_s=0.1)),
                    keys=[k for k in Corpus(root / "corpus.zarr").keys() if k.startswith("synth_myo/")], workers=1,
                    progress=False)
    cfg = _config(root, tmp_path / "eval", f"checkpoints=[{runs['unseen']}]", "methods=[aemg_probe]", "workers=1",
                  f"windows_tokens={other}")
    with pytest.raises(ConfigError, match="other tokens settings"):
        evaluate(cfg, progress=False)


def test_windows_folder_from_before_a_token_setting_is_read_with_its_old_value(setup, tmp_path):
    """OUT/windows/tokens.json written before tokens.window_summary existed was made without the summary group: it
    is reused for a checkpoint pretrained on such tokens and refused for one pretrained on today's default."""
    root, runs = setup
    from aemg_dist.artifacts import TokenizeConfig
    from aemg_dist.tokens import TokenConfig

    def checkpoint(window_summary: bool | None) -> Checkpoint:  # a tokens folder whose tokenize.yaml may lack the key
        tokens = tmp_path / f"tokens-{window_summary}"
        tokens.mkdir()
        recorded = asdict(TokenizeConfig(tokens=TokenConfig(window_summary=bool(window_summary))))
        if window_summary is None:
            del recorded["tokens"]["window_summary"]
        (tokens / "tokenize.yaml").write_text(json.dumps(recorded))  # JSON is YAML
        return Checkpoint(run=str(runs["unseen"]), export=str(runs["unseen"] / "export"), tokens=str(tokens),
                          seen=frozenset())

    cfg = _config(root, tmp_path / "eval")
    made = asdict(TokenizeConfig(tokens=TokenConfig(window_summary=False)))
    made["windows"] = asdict(cfg.windows)
    del made["tokens"]["window_summary"]  # as an older version wrote it
    (tmp_path / "eval" / "windows").mkdir(parents=True)
    (tmp_path / "eval" / "windows" / "tokens.json").write_text(json.dumps({"config": made}))
    for old in (None, False):
        assert labeled_tokens(cfg, [checkpoint(old)], progress=False) == str(tmp_path / "eval" / "windows")
    with pytest.raises(ConfigError, match="other settings"):
        labeled_tokens(cfg, [checkpoint(True)], progress=False)
