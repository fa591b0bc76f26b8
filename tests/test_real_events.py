"""Do contraction events line up with the labels? Event coverage of gesture vs rest time.

Acceptance criterion (real_data): on at least four of the six shared datasets, the share of
gesture time covered by events is at least 3x the share of rest time covered. The corpus is
built here from a few recordings per dataset (the first JOBS_PER_DATASET in manifest order), so
the test needs only ../shared/data and stays well under a minute. On the synthetic corpus,
where rest is truly quiet, the ratio must be far larger.

Two datasets stay below 3 for reasons in the data, not the detector (plots from `plot_events`):
- multiday: the "No Motion" file (class 0) holds a sustained contraction on three of the four
  channels after a ~0.45 s quiet lead-in, stronger than several gestures, so ~92 % of its time
  is active whatever the thresholds; and the recordings have almost no real rest (only those
  lead-ins), so the floor sits near the level of the weakest holds.
- francic: in most 1-minute files the subject does not relax between the 5 s gesture cues: one
  to three channels stay 2-4x above the recording's rest level through "hibernation" (tonic
  activity or drift within the session), and coverage is a union over channels.
myodisco passes narrowly (3.5 on all 14 subjects): some subjects drift the same way on one
channel in later z_rest files, and its dynamic gestures fill only part of their 2 s files.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_events import square_bursts

from aemg_dist.cli import format_table
from aemg_dist.coverage import coverage_table, covered_mask
from aemg_dist.events import EventConfig
from preprocessing.manifest import manifest_jobs, resolve_source
from preprocessing.prepare import prepare
from preprocessing.synthetic import SyntheticConfig, synthetic_jobs

JOBS_PER_DATASET = 3
MIN_RATIO = 3.0
MIN_DATASETS = 4


def _prepared(jobs, out) -> str:
    report = prepare(jobs, out, workers=1, progress=False)
    assert report.failed == []
    return str(out)


@pytest.mark.real_data
def test_events_cover_gestures_at_least_3x_more_than_rest_on_four_of_six_datasets(data_root, tmp_path):
    jobs = [job for manifest, root in resolve_source(str(data_root))
            for job in manifest_jobs(manifest, root)[:JOBS_PER_DATASET]]
    rows = coverage_table(_prepared(jobs, tmp_path / "real.zarr"))
    print("\n" + format_table(rows))
    assert len(rows) == 6
    passing = [r["dataset"] for r in rows if r["ratio"] is not None and r["ratio"] >= MIN_RATIO]
    assert len(passing) >= MIN_DATASETS, f"ratio >= {MIN_RATIO} only on {passing}"
    for row in rows:  # events must still cover most of the gestures: a silent detector would pass the ratio
        assert row["gesture_coverage"] >= 0.5, row


def test_covered_mask_is_the_union_of_event_spans_over_good_channels():
    # Square bursts make the envelope exact at a 1 ms step and window (see test_events.py).
    x = square_bursts(3000, [[(500, 1000), (1800, 2600)], [(600, 1200)], [(2700, 2900)]])
    cfg = EventConfig(step_ms=1.0, window_ms=1.0)
    expected = np.zeros(3000, dtype=bool)
    expected[500:1200] = expected[1800:2600] = True
    # A join inside a burst splits its event but not the covered time; channel 2 is bad, its burst ignored.
    mask = covered_mask(x, 1000.0, [2000], cfg, channel_ok=np.array([True, True, False]))
    assert np.array_equal(mask, expected)


def test_synthetic_events_cover_gestures_far_more_than_rest(tmp_path):
    rows = coverage_table(_prepared(synthetic_jobs(SyntheticConfig(scale="tiny")), tmp_path / "synth.zarr"))
    print("\n" + format_table(rows))
    for row in rows:
        assert row["gesture_coverage"] >= 0.75 and row["ratio"] > 5.0, row
