"""`aemg scaling run` on the tiny synthetic corpus (configs/scaling/tiny.yaml: 3 model sizes x 3 token budgets,
each a Ray Train job driven by a Tune trial, then one LOSO fold per run): runs.csv holds N, D and FLOPs of what
each run trained on and its final held-out loss, the law is fitted, accuracy is related to scale, and a
--resume trains nothing again. Config errors fail before anything runs."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from aemg_dist import cli
from aemg_dist.config import ConfigError, load_config
from aemg_dist.data import tokenize_corpus
from aemg_dist.artifacts import last_metrics
from aemg_dist.train import PretrainConfig, load_pretrain_config, split_tables
from aggregates import check_scaling_downstream
from tuning.scaling import load_scaling_config, scaling_run
from tuning.trials import EXECUTIONS_FILE

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "scaling" / "tiny.yaml"
SIZES, STEPS, BATCH = ("d16", "d32", "d64"), (4, 8, 12), 16


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def scaled(tiny_corpus, ray_local, tmp_path_factory):
    """The CI scaling run on the session's tiny corpus, then the same command with --resume."""
    root = tmp_path_factory.mktemp("scaling")
    tokenize_corpus(tiny_corpus, root / "tokens", workers=1, progress=False)
    raw = OmegaConf.load(TINY)
    raw.pretrain_config = str(REPO / raw.pretrain_config)
    raw.pretrain_overrides = [*raw.pretrain_overrides, f"data.tokens={root / 'tokens'}"]  # later overrides win
    raw.evaluation.corpus, raw.out = str(tiny_corpus), str(root / "out")
    OmegaConf.save(raw, root / "scaling.yaml")
    first = scaling_run(load_scaling_config(root / "scaling.yaml"), progress=False)
    starts = _starts(first.out)
    assert cli.main(["scaling", "run", "--config", str(root / "scaling.yaml"), "--resume", "--quiet"]) == 0
    return first, starts, root


def _starts(out: Path) -> Counter:
    lines = (out / EXECUTIONS_FILE).read_text().splitlines()
    return Counter((e["phase"], e["trial"]) for e in map(json.loads, lines) if e["event"] == "start")


def test_runs_table_counts_what_each_run_trained_on(scaled):
    result, _, root = scaled
    runs = {r["run"]: r for r in _read_csv(result.out / "runs.csv")}
    assert sorted(runs) == sorted(f"{size}-s{steps}" for size in SIZES for steps in STEPS)
    # D: steps x batch windows x the mean window length of the training split (the same data for every size),
    # which leaves out the evaluated subject
    config = load_pretrain_config(REPO / "configs" / "pretrain" / "tiny.yaml",
                                  [f"data.tokens={root / 'tokens'}", f"data.batch_size={BATCH}",
                                   "data.exclude_subjects=[synth_myo/s01]"])
    for run in runs:
        saved = load_config(PretrainConfig, result.out / "pretrain" / f"{run}-g0" / "config.yaml")
        assert saved.data.exclude_subjects == ["synth_myo/s01"] and saved.data.batch_size == BATCH
    train, _ = split_tables(config.data)
    mean_tokens = np.minimum(train.column("n_tokens").to_numpy(), config.data.max_tokens).mean()
    for size in SIZES:
        for steps in STEPS:
            run = runs[f"{size}-s{steps}"]
            assert float(run["D"]) == pytest.approx(steps * BATCH * mean_tokens)
            # the final held-out loss of the run's own metrics
            final = last_metrics(result.out / "pretrain" / f"{size}-s{steps}-g0")
            assert final["step"] == steps and float(run["loss"]) == pytest.approx(final["val_loss"])
        assert float(runs[f"{size}-s8"]["flops"]) == pytest.approx(2 * float(runs[f"{size}-s4"]["flops"]))
    n = [float(runs[f"{size}-s4"]["N"]) for size in SIZES]
    assert n[0] < n[1] < n[2] and all(float(runs[f"{s}-s4"]["params"]) > float(runs[f"{s}-s4"]["N"]) for s in SIZES)
    # the real count adds attention to 6 N D, a share that shrinks as the model widens
    excess = [float(runs[f"{s}-s4"]["flops"]) / (6 * float(runs[f"{s}-s4"]["N"]) * float(runs[f"{s}-s4"]["D"]))
              for s in SIZES]
    assert 1 < excess[2] < excess[1] < excess[0]


def test_fit_downstream_and_report(scaled):
    result, _, _ = scaled
    fit = json.loads((result.out / "fit" / "fit.json").read_text())
    assert all(math.isfinite(fit["point"][p]) for p in ("E", "A", "alpha", "B", "beta"))
    downstream = _read_csv(result.out / "downstream.csv")
    assert sorted(r["run"] for r in downstream) == sorted(r["run"] for r in result.runs)
    assert {(r["method"], r["budget"], r["datasets"]) for r in downstream} == {("aemg_finetune", "10.0", "1")}
    assert all(0 <= float(r["balanced_accuracy"]) <= 1 for r in downstream)
    assert check_scaling_downstream(result.out) == len(downstream)  # recomputed from the trials' own rows
    # the accuracy of a run is its evaluation trial's
    trial = json.loads(next((result.out / "trials").glob("d64-s8-*.json")).read_text())
    row = next(r for r in downstream if r["run"] == "d64-s8")
    assert float(row["balanced_accuracy"]) == pytest.approx(np.mean([t["balanced_accuracy"] for t in trial]))
    report = result.report.read_text()
    assert "L(N, D) =" in report and "Spearman" in report and "| d64-s8 |" in report
    for name in ("downstream.png", "fit/loss_vs_N.png", "fit/isoflop.png"):
        assert (result.out / name).stat().st_size > 0


def test_resume_trains_nothing_again(scaled):
    result, starts_before, _ = scaled
    starts = _starts(result.out)
    assert Counter(phase for phase, _ in starts_before) == {"pretrain": 9, "evaluate": 9}
    assert starts == starts_before, "a finished trial ran again after --resume"
    assert _read_csv(result.out / "runs.csv") == [{k: str(v) for k, v in r.items()} for r in result.runs]


def test_config_errors_fail_before_anything_runs(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"sizes may not set \['optim.max_steps'\]"):
        load_scaling_config(TINY, ["sizes.d16=[optim.max_steps=3]"])
    with pytest.raises(ConfigError, match="evaluate: true needs evaluation.corpus"):
        load_scaling_config(TINY, ["evaluation.corpus=''"])
    with pytest.raises(ConfigError, match="steps must be distinct"):
        load_scaling_config(TINY, ["steps=[4,4]"])
    with pytest.raises(ConfigError, match="writes its results to a local or mounted path"):
        scaling_run(load_scaling_config(TINY, ["out=s3://bucket/scaling"]), progress=False)
    assert cli.main(["scaling", "run"]) == 2
    assert "needs --config" in capsys.readouterr().err
    assert cli.main(["scaling", "fit", "--runs", str(tmp_path / "runs.csv")]) == 2
    assert "needs --runs RUNS.csv and --out" in capsys.readouterr().err
