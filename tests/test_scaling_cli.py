"""`aemg scaling fit|plot` over a runs table: the fit, its report and plots, and clear input errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from aemg_dist import cli
from tuning.scaling import fit_runs, plot_fit, read_runs
from tuning.scaling_fit import ScalingLaw

TRUE = ScalingLaw(E=1.7, A=400.0, alpha=0.34, B=410.0, beta=0.28)


def _write_runs(path, seeds=(0, 1)):
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "N", "D", "loss", "seed"])
        for seed in seeds:
            for n in np.geomspace(1e5, 1e8, 4):
                for d in np.geomspace(1e6, 1e9, 5):
                    loss = float(TRUE.predict(n, d)) * np.exp(0.01 * rng.standard_normal())
                    writer.writerow([f"n{n:.0f}-d{d:.0f}-s{seed}", n, d, loss, seed])
    return path


def test_fit_runs_writes_the_law_its_intervals_and_plots(tmp_path):
    runs = _write_runs(tmp_path / "runs.csv")
    result = fit_runs(runs, tmp_path / "fit", group_column="seed", n_boot=20)
    assert result["n_groups"] == 2
    law = result["point"]
    assert law.alpha == pytest.approx(TRUE.alpha, rel=0.1) and law.beta == pytest.approx(TRUE.beta, rel=0.1)
    saved = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert saved["point"]["alpha"] == pytest.approx(law.alpha)
    report = (tmp_path / "fit" / "fit.md").read_text()
    assert "Compute-optimal" in report and "| alpha |" in report
    for name in ("loss_vs_N.png", "loss_vs_D.png", "isoflop.png"):
        assert (tmp_path / "fit" / name).stat().st_size > 0
    redrawn = plot_fit(tmp_path / "fit" / "fit.json", runs, tmp_path / "again")
    assert sorted(p.name for p in redrawn) == ["isoflop.png", "loss_vs_D.png", "loss_vs_N.png"]


def test_read_runs_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="runs table"):
        read_runs(tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("N,D\n1,2\n")
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['loss'\]"):
        read_runs(bad)
    bad.write_text("N,D,loss\n1,2,high\n")
    with pytest.raises(ValueError, match="'loss' is not numeric"):
        read_runs(bad)
    runs = _write_runs(tmp_path / "runs.csv")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['subject'\]"):
        read_runs(runs, group_column="subject")


def test_cli_scaling_fit_and_plot(tmp_path, capsys):
    runs = _write_runs(tmp_path / "runs.csv", seeds=(0,))
    assert cli.main(["scaling", "fit", "--runs", str(runs), "--out", str(tmp_path / "fit"), "--n-boot", "10"]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "fit.json" in out
    assert cli.main(["scaling", "plot", "--fit", str(tmp_path / "fit" / "fit.json"), "--runs", str(runs),
                     "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "isoflop.png").exists()
    assert cli.main(["scaling", "fit", "--runs", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "runs table" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("N,D\n1,2\n")
    assert cli.main(["scaling", "fit", "--runs", str(bad), "--out", str(tmp_path / "y")]) == 2
    assert "missing column" in capsys.readouterr().err
