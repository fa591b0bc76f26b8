"""`aemg sweep` on the tiny synthetic corpus: the shipped CI sweep (configs/sweep/tiny.yaml: 2 codebook
sizes x 2 mask ratios x 2 LOSO folds x 2 budgets) is interrupted with Ctrl-C during its evaluation phase,
resumed with --resume, and must end with every aggregated cell, its files, and no finished trial run twice.
Config errors fail before anything runs."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from aemg_dist import cli
from aemg_dist.config import ConfigError, save_config
from aemg_dist.data import tokenize_corpus
from tuning.sweep import CONFIG_FILE, EXECUTIONS_FILE, configurations, load_sweep_config, sweep
from tuning.sweep_report import ALL_DATASETS, dataset_means, t_interval

REPO = Path(__file__).resolve().parents[1]
TINY_SWEEP = REPO / "configs" / "sweep" / "tiny.yaml"
CONFIGURATIONS = {"codebook_size-32_mask_ratio-0.3", "codebook_size-32_mask_ratio-0.5",
                  "codebook_size-64_mask_ratio-0.3", "codebook_size-64_mask_ratio-0.5"}
METHODS, BUDGETS, FOLDS = ("aemg_finetune", "aemg_probe"), ("0.0", "10.0"), ("s01", "s02")
N_PRETRAIN, N_EVALUATE = 4, 4 * 2 * 2  # configurations; configurations x folds x budgets
INTERRUPT_AFTER = N_PRETRAIN + 3  # finished trials: the Ctrl-C lands in the evaluation phase
DESIGN_COLUMNS = ["method", "dataset", "subject", "budget", "seed", "balanced_accuracy", "macro_f1", "n_train", "n_test"]


def _write_config(path: Path, corpus: Path, tokens: Path) -> Path:
    """configs/sweep/tiny.yaml with absolute paths to a corpus and pretraining tokens."""
    raw = OmegaConf.load(TINY_SWEEP)
    raw.pretrain_config = str(REPO / raw.pretrain_config)
    raw.pretrain_overrides = [*raw.pretrain_overrides, f"data.tokens={tokens}"]  # later overrides win
    raw.evaluation.corpus = str(corpus)
    OmegaConf.save(raw, path)
    return path


@pytest.fixture(scope="module")
def sweep_config(tiny_corpus, tmp_path_factory) -> Path:
    """The CI sweep on the session's tiny corpus and fresh pretraining tokens."""
    root = tmp_path_factory.mktemp("sweep")
    tokenize_corpus(tiny_corpus, root / "tokens", workers=1, progress=False)
    return _write_config(root / "sweep.yaml", tiny_corpus, root / "tokens")


def _events(out: Path) -> list[dict]:
    """The lines of OUT/executions.jsonl written so far (not one being appended right now)."""
    path = out / EXECUTIONS_FILE
    text = path.read_text() if path.is_file() else ""
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


@pytest.fixture(scope="module")
def swept(sweep_config, ray_local, tmp_path_factory):
    """The sweep as a driver process of the test's Ray cluster, sent SIGINT (Ctrl-C) once INTERRUPT_AFTER
    trials have finished; then `aemg sweep --resume` in this process. Returns (out, the first's exit status
    and output)."""
    out = tmp_path_factory.mktemp("swept") / "out"
    logs = out.parent / "driver.log"
    address = ray_local.get_runtime_context().gcs_address
    with logs.open("w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "aemg_dist.cli", "sweep", "--config", str(sweep_config),
                                   "--quiet", f"out={out}", f"address={address}"], cwd=REPO, stdout=log,
                                  stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            deadline = time.monotonic() + 400
            while sum(e["event"] == "finish" for e in _events(out)) < INTERRUPT_AFTER:
                assert driver.poll() is None, f"the sweep ended before the interruption:\n{logs.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no {INTERRUPT_AFTER} finished trials:\n{logs.read_text()[-3000:]}"
                time.sleep(0.3)
            driver.send_signal(signal.SIGINT)
            status = driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    assert cli.main(["sweep", "--config", str(sweep_config), "--resume", "--quiet", f"out={out}"]) == 0
    return out, status, logs.read_text()


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(swept):
    out, status, log = swept
    assert status == 130 and "--resume" in log, log[-2000:]
    events = _events(out)
    resumed = next(i for i, e in enumerate(events) if e["event"] == "resume")
    first, second = events[:resumed], events[resumed:]
    finished_first = {e["trial"] for e in first if e["event"] == "finish"}
    started_second = [e["trial"] for e in second if e["event"] == "start"]
    assert INTERRUPT_AFTER <= len(finished_first) < N_PRETRAIN + N_EVALUATE  # interrupted, not finished
    assert not finished_first & set(started_second), "a finished trial ran again after --resume"
    assert started_second and all(e["phase"] == "evaluate" for e in second if e["event"] == "start")
    finishes = Counter(e["trial"] for e in events if e["event"] == "finish")
    assert len(finishes) == N_PRETRAIN + N_EVALUATE and set(finishes.values()) == {1}  # every trial, once
    assert Counter(e["phase"] for e in events if e["event"] == "start")["pretrain"] == N_PRETRAIN
    assert not [e for e in events if e["event"] == "error"]


def test_every_aggregated_cell_and_the_report(swept):
    out, _, _ = swept
    cells = list(csv.DictReader((out / "aggregate.csv").open()))
    keys = Counter((c["configuration"], c["method"], c["dataset"], c["budget"], c["metric"]) for c in cells)
    expected = {(c, m, "synth_myo", b, metric) for c in CONFIGURATIONS for m in METHODS for b in BUDGETS
                for metric in ("balanced_accuracy", "macro_f1")}
    assert set(keys) == expected and set(keys.values()) == {1}
    for c in cells:
        assert c["n"] == "2" and 0 <= float(c["mean"]) <= 1
        assert float(c["ci_low"]) <= float(c["mean"]) <= float(c["ci_high"])
        assert c["configuration"] == f"codebook_size-{c['codebook_size']}_mask_ratio-{c['mask_ratio']}"
    with (out / "summary.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:9] == DESIGN_COLUMNS and reader.fieldnames[-3:] == ["configuration", "codebook_size",
                                                                                  "mask_ratio"]
    assert Counter((r["configuration"], r["method"], r["subject"], r["budget"]) for r in rows) == {
        (c, m, s, b): 1 for c in CONFIGURATIONS for m in METHODS for s in FOLDS for b in BUDGETS}
    assert {r["pretraining"] for r in rows} == {"unseen_subject"}  # every run left both synth_myo subjects out
    for name in CONFIGURATIONS:
        run = out / "pretrain" / f"{name}-g0"
        config = OmegaConf.load(run / "config.yaml")
        assert (run / "export" / "model.safetensors").is_file()
        assert set(config.data.exclude_subjects) == {"synth_myo/s01", "synth_myo/s02"}
        assert config.model.codebook_size == int(name.split("_")[1].split("-")[1])
    report = (out / "report.md").read_text()
    assert all(name in report for name in CONFIGURATIONS) and "95 %" in report and "exported" in report
    for png in ("heatmap_synth_myo.png", "budget_synth_myo.png", "codebook.png"):
        assert (out / png).stat().st_size > 10_000, png
    assert math.isfinite(float(cells[0]["std"]))


def test_config_errors_fail_before_anything_runs(tmp_path, capsys):
    sweep_config = _write_config(tmp_path / "sweep.yaml", tmp_path / "corpus.zarr", tmp_path / "tokens")  # unread
    with pytest.raises(ConfigError, match="set by the sweep"):
        load_sweep_config(sweep_config, ["grid.data.tokens=[a,b]"])
    with pytest.raises(ConfigError, match="non-empty list"):
        load_sweep_config(sweep_config, ["grid.model.mask_ratio=[]"])
    with pytest.raises(ConfigError, match="repeat"):
        load_sweep_config(sweep_config, ["grid.model.mask_ratio=[0.3,0.3]"])
    with pytest.raises(ConfigError, match="evaluation.checkpoints"):
        load_sweep_config(sweep_config, ["evaluation.checkpoints=[runs/pt]"])
    # the grid's keys and values are checked as PretrainConfig overrides, naming the configuration
    with pytest.raises(ConfigError, match="codebook_size-32_mask_ratio-1.5.*mask"):
        sweep(load_sweep_config(sweep_config, [f"out={tmp_path / 'a'}", "grid.model.mask_ratio=[1.5]"]))
    with pytest.raises(ConfigError, match="codebok_size"):
        sweep(load_sweep_config(sweep_config, [f"out={tmp_path / 'b'}", "grid.model.codebok_size=[8]"]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # a used out needs --resume, and --resume the same settings
    (tmp_path / "c" / "tune").mkdir(parents=True)
    argv = ["sweep", "--config", str(sweep_config), "--quiet", f"out={tmp_path / 'c'}"]
    assert cli.main(argv) == 2
    assert "aemg sweep: error:" in capsys.readouterr().err
    save_config(load_sweep_config(sweep_config, [f"out={tmp_path / 'c'}"]), tmp_path / "c" / CONFIG_FILE)
    assert cli.main([*argv, "--resume", "evaluation.budgets=[0,5]"]) == 2
    assert "other settings (evaluation)" in capsys.readouterr().err


def test_configuration_names_and_confidence_intervals():
    grid = configurations({"model.codebook_size": [64, 256], "model.mask_ratio": [0.3]})
    assert [c.name for c in grid] == ["codebook_size-64_mask_ratio-0.3", "codebook_size-256_mask_ratio-0.3"]
    assert grid[1].values == {"codebook_size": 256, "mask_ratio": 0.3}
    # keys whose last parts collide keep their section in the column name
    assert configurations({"model.dropout": [0.1], "optim.dropout": [0.0]})[0].values == {"model_dropout": 0.1,
                                                                                          "optim_dropout": 0.0}
    low, high = t_interval(0.5, 0.1, 2)
    assert high - 0.5 == pytest.approx(0.5 - low) == pytest.approx(12.7062 * 0.1 / math.sqrt(2), rel=1e-4)
    assert all(math.isnan(v) for v in t_interval(0.5, 0.0, 1))


def test_dataset_means_weigh_every_dataset_the_same():
    cell = {"configuration": "c", "method": "aemg_finetune", "budget": 10.0, "metric": "balanced_accuracy"}
    cells = [{**cell, "dataset": "a", "mean": 0.5, "std": 0.1, "n": 20},
             {**cell, "dataset": "b", "mean": 0.9, "std": 0.0, "n": 2},  # two subjects weigh as much as twenty
             {**cell, "budget": 1.0, "dataset": "a", "mean": 0.3, "std": 0.0, "n": 20}]
    overall = {c["budget"]: c for c in dataset_means(cells)}
    assert overall[10.0]["dataset"] == ALL_DATASETS and overall[10.0]["n"] == 2
    assert overall[10.0]["mean"] == pytest.approx(0.7) and overall[10.0]["std"] == pytest.approx(0.4 / math.sqrt(2))
    assert overall[10.0]["ci_low"] < 0.7 < overall[10.0]["ci_high"]
    assert overall[1.0]["mean"] == 0.3 and overall[1.0]["n"] == 1 and math.isnan(overall[1.0]["ci_low"])
