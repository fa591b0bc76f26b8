"""Reading a pretraining run folder while it trains: its metrics rows and Ray Train's registered checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def metric_steps(out: Path) -> list[int]:
    """The step of every whole row of OUT/metrics.csv so far ([] before the first; not a row being appended)."""
    path = out / "metrics.csv"
    text = path.read_text() if path.is_file() else ""
    return [int(float(row["step"])) for row in csv.DictReader(text[:text.rfind("\n") + 1].splitlines())]


def registered_step(out: Path) -> int:
    """The step of the latest checkpoint Ray Train has registered (0 before the first)."""
    try:
        snapshot = json.loads((out / "ray" / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being written
        return 0
    latest = snapshot.get("latest_checkpoint_result") or {}
    return int(latest.get("metrics", {}).get("step", 0))


def reached_before_restart(steps: list[int], resumed: int, last: int) -> int:
    """The step a run logged every step had reached when it restarted once from step `resumed`; its rows are
    steps 1..reached, then resumed+1..last."""
    reached = len(steps) - (last - resumed)
    assert steps == [*range(1, reached + 1), *range(resumed + 1, last + 1)], steps
    return reached
