"""Event plots on a tiny synthetic corpus: a valid PNG is written, HD grids are cut to the most
active channels, and bad input fails with a message that names it."""

from __future__ import annotations

import matplotlib.image
import pytest

from aemg_dist.plots import MAX_PANELS, plot_events
from preprocessing.prepare import prepare
from preprocessing.synthetic import SyntheticConfig, synthetic_jobs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


MYO, GRID = "synth_myo/s01/session1", "synth_hdgrid/s01/session1"  # 8 channels at 200 Hz; an 8x8 grid


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots") / "synth.zarr"
    jobs = [job for job in synthetic_jobs(SyntheticConfig(scale="tiny")) if job.key in (MYO, GRID)]
    report = prepare(jobs, out, workers=1, progress=False)
    assert report.failed == []
    return out


def test_event_plot_is_a_png_of_plausible_size(corpus_path, tmp_path):
    out = plot_events(corpus_path, MYO, tmp_path / "sub" / "events.png", duration_s=10.0)
    assert out == tmp_path / "sub" / "events.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert 20_000 < out.stat().st_size < 5_000_000
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width >= 1000 and height >= 8 * 80  # one readable panel per channel (8 here)


def test_a_64_channel_grid_shows_only_the_most_active_channels(corpus_path, tmp_path):
    eight = matplotlib.image.imread(plot_events(corpus_path, MYO, tmp_path / "myo.png"))
    grid = matplotlib.image.imread(plot_events(corpus_path, GRID, tmp_path / "grid.png"))
    # Panels have a fixed height, so the image grows by (MAX_PANELS - 8) panels, not by 56.
    per_panel = (grid.shape[0] - eight.shape[0]) / (MAX_PANELS - 8)
    assert 50 < per_panel < 200


def test_unknown_recording_raises_key_error_naming_it(corpus_path, tmp_path):
    with pytest.raises(KeyError, match="synth_myo/s99/nothing"):
        plot_events(corpus_path, "synth_myo/s99/nothing", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_span_outside_the_recording_raises_value_error(corpus_path, tmp_path):
    with pytest.raises(ValueError, match="outside the recording"):
        plot_events(corpus_path, MYO, tmp_path / "x.png", start_s=1e4)
