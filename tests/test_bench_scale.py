"""benchmarks/bench_scale.py end to end at its smallest (one tiny subject per device, then two), so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_scale import kinds_over, worker_kinds  # noqa: E402 - benchmarks/ is not a package


def test_worker_kinds_compare_readers_across_fusions_and_flag_only_what_grew():
    small = worker_kinds({"11 ray::RayTrainWorker": 808.0, "12 ray::ReadParquet->SplitBlocks(3)": 404.0,
                          "13 ray::IDLE": 410.0, "14 ray::IDLE": 79.0})
    large = worker_kinds({"21 ray::RayTrainWorker": 820.0, "22 ray::ReadParquet": 859.0, "23 ray::IDLE": 884.0,
                          "24 ray::DatasetManager": 206.0})
    # the largest of each kind, the pid and the fused operators dropped
    assert small == {"ray::RayTrainWorker": 808.0, "ray::ReadParquet": 404.0, "ray::IDLE": 410.0}
    # the largest worker grew 1.01x, yet the readers doubled; a kind seen at one size only is not compared
    assert kinds_over(small, large, 1.2) == {"ray::IDLE": 2.16, "ray::ReadParquet": 2.13}
    assert kinds_over(small, small, 1.2) == {}


@pytest.mark.slow
def test_bench_scale_runs_every_stage_at_both_sizes(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--scale", "tiny", "--fraction", "0.3",
           "--factor", "2", "--steps", "2", "--batch-size", "8", "--out", str(out), "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    record = json.loads((out / "scale.json").read_text())
    assert list(record["results"]) == ["1x", "2x"]
    assert [r["size"]["recordings"] for r in record["results"].values()] == [4, 8]
    for result in record["results"].values():
        for stage in ("prepare", "tokenize", "pretrain"):
            peaks = result["stages"][stage]
            # every stage ran on Ray: the driver, at least one worker and Ray's daemons were all seen
            assert peaks["wall_s"] > 0 and peaks["driver_mb"] > 50 and peaks["max_worker_mb"] > 50
            assert peaks["ray_system_mb"] > 0 and peaks["total_mb"] >= max(peaks["driver_mb"], peaks["max_worker_mb"])
            assert peaks["max_worker"].split(" ", 1)[1].startswith("ray::")
    assert set(record["ratios"]) == {"prepare", "tokenize", "pretrain"}
    table = (out / "scale.md").read_text()
    assert "| pretrain | 2x |" in table and "2x/1x wall" in table
    assert sorted(p.name for p in out.glob("*.log")) == sorted(f"{size}-{stage}.log" for size in ("1x", "2x")
                                                               for stage in ("prepare", "tokenize", "pretrain"))

    # pretraining measured again on what the run left: it trains afresh (no resume from the first run's checkpoint)
    sentinel = tmp_path / "work" / "2x" / "pretrain" / "from-the-first-run"
    sentinel.write_text("")
    done = subprocess.run([*cmd, "--stages", "pretrain"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    again = json.loads((out / "scale.json").read_text())
    assert [list(r["stages"]) for r in again["results"].values()] == [["pretrain"], ["pretrain"]]
    assert set(again["ratios"]) == {"pretrain"} and "kinds_private_over" in again["ratios"]["pretrain"]
    for result in again["results"].values():  # private memory is part of each worker's RSS
        kinds = result["stages"]["pretrain"]
        assert 0 < kinds["kinds_private_mb"]["ray::RayTrainWorker"] <= kinds["kinds_mb"]["ray::RayTrainWorker"]
    assert not sentinel.exists() and (sentinel.parent / "metrics.csv").exists()
    assert "| prepare |" not in (out / "scale.md").read_text()
