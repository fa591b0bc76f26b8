"""benchmarks/bench_scale.py end to end at its smallest (one tiny subject per device, then two), so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
