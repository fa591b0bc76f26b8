import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aemg_dist.cli import main as aemg
from preprocessing.corpus import Corpus, CorpusError, CorpusWriter, check_corpus
from preprocessing.harmonize import HarmonizeConfig, harmonize
from preprocessing.prepare import prepare
from recordings import ArrayJob

JOBS = [ArrayJob("dsa", "s1", "day1"), ArrayJob("dsa", "s2", "day1"), ArrayJob("dsb", "s1", "day2", seconds=2.5)]


def test_round_trip_manifest_and_metadata(tmp_path):
    out = tmp_path / "c.zarr"
    report = prepare(JOBS, out, workers=1, progress=False)
    assert report.ok and sorted(report.written) == sorted(j.key for j in JOBS)
    corpus = Corpus(out)
    assert corpus.keys() == sorted(j.key for j in JOBS)
    job = JOBS[0]
    expected = harmonize(job.load(), HarmonizeConfig())  # the whole-recording path; prepare streams
    np.testing.assert_allclose(corpus.read(job.key), expected.emg, rtol=0, atol=1e-6)
    np.testing.assert_allclose(corpus.read(job.key, 100, 250), expected.emg[100:250], rtol=0, atol=1e-6)
    assert corpus.segments(job.key) == expected.segments
    attrs = corpus.attrs(job.key)
    assert attrs["source_fs"] == 1000.0 and attrs["fs"] == 1000.0 and attrs["complete"] is True
    assert len(attrs["canonical_coordinates"]) == 4 and attrs["channel_ok"] == [True] * 4
    entry = corpus.entry("dsb/s1/day2")
    assert (entry.n_samples, entry.n_channels, entry.n_segments) == (2500, 4, 2)
    with pytest.raises(IndexError):
        corpus.read(job.key, 0, 10**9)
    assert check_corpus(out) == []


def test_rerun_is_idempotent_and_adds_only_what_is_missing(tmp_path):
    out = tmp_path / "c.zarr"
    prepare(JOBS[:2], out, workers=1, progress=False)
    before = {k: os.path.getmtime(out / k / "zarr.json") for k in (JOBS[0].key, JOBS[1].key)}
    report = prepare(JOBS, out, workers=1, progress=False)
    assert sorted(report.skipped) == sorted(j.key for j in JOBS[:2]) and report.written == [JOBS[2].key]
    assert {k: os.path.getmtime(out / k / "zarr.json") for k in before} == before
    assert len(Corpus(out)) == 3


def test_failed_recording_is_reported_and_the_others_are_prepared(tmp_path):
    jobs = [*JOBS, ArrayJob("dsa", "s3", "day1", fail="truncated: 1234 bytes is not a multiple of 16")]
    report = prepare(jobs, tmp_path / "c.zarr", workers=1, progress=False)
    assert report.failed == [("dsa/s3/day1", "dsa/s3/day1.csv: truncated: 1234 bytes is not a multiple of 16")]
    assert len(Corpus(tmp_path / "c.zarr")) == 3
    assert "FAILED dsa/s3/day1" in report.summary()


def test_other_settings_on_an_existing_corpus_are_refused(tmp_path):
    prepare(JOBS[:1], tmp_path / "c.zarr", workers=1, progress=False)
    with pytest.raises(CorpusError, match="target_fs"):
        CorpusWriter(tmp_path / "c.zarr", HarmonizeConfig(target_fs=2000))
    CorpusWriter(tmp_path / "c.zarr", HarmonizeConfig(chunk_seconds=7.0))  # how it streams is not what it holds


def test_incomplete_group_is_invisible_reported_and_rewritten(tmp_path):
    out = tmp_path / "c.zarr"
    prepare(JOBS, out, workers=1, progress=False)
    # what a crash between the array write and the final attributes leaves behind
    writer = CorpusWriter(out, HarmonizeConfig())
    writer.root[JOBS[1].key].attrs.update({"complete": False})
    writer.write_manifest()
    assert JOBS[1].key not in Corpus(out)
    assert any("incomplete" in p for p in check_corpus(out))
    report = prepare(JOBS, out, workers=1, progress=False)
    assert report.written == [JOBS[1].key]
    assert check_corpus(out) == []


def test_killed_mid_write_leaves_nothing_that_looks_complete(tmp_path):
    """SIGKILL a real prepare while it writes, then re-run: the corpus checks clean."""
    out = tmp_path / "c.zarr"
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from preprocessing import harmonize as h
from preprocessing.prepare import prepare
from recordings import ArrayJob
original = h.HarmonizedRecording.attrs
def stall(self, config):  # runs after the array is written, before the group is marked complete
    print("writing", flush=True)
    time.sleep(120)
h.HarmonizedRecording.attrs = stall
prepare([ArrayJob("dsa", "s1", "day1", seconds=30)], {str(out)!r}, workers=1, progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "dsa/s1/day1/emg").is_dir()  # the array is on disk...
    problems = check_corpus(out)  # ...but the corpus does not count it
    assert problems and "no manifest.json" in problems[0]
    report = prepare([ArrayJob("dsa", "s1", "day1", seconds=30), JOBS[1]], out, workers=1, progress=False)
    assert sorted(report.written) == ["dsa/s1/day1", "dsa/s2/day1"]
    assert check_corpus(out) == []


def test_check_finds_a_corrupted_recording(tmp_path):
    out = tmp_path / "c.zarr"
    prepare(JOBS, out, workers=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["recordings"][0]["n_samples"] += 5
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems = check_corpus(out)
    assert any("shape" in p for p in problems)


def test_cli_prepare_info_check(tmp_path, capsys, monkeypatch):
    import aemg_dist.cli as cli

    monkeypatch.setattr(cli, "_source_jobs", lambda args: JOBS)
    out = tmp_path / "c.zarr"
    assert aemg(["prepare", "--source", "x", "--out", str(out), "--workers", "1", "--quiet", "highpass_hz=15"]) == 0
    assert "highpass_hz: 15.0" in (out / "prepare.yaml").read_text()
    assert aemg(["corpus", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dsa" in text and "dsb" in text and "3 recordings" in text
    assert aemg(["corpus", "check", str(out)]) == 0
    assert aemg(["prepare", "--source", "x", "--out", str(out), "--workers", "1", "nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert aemg(["corpus", "check", str(tmp_path / "missing.zarr")]) == 1
    # overrides before and after options both count
    other = tmp_path / "other.zarr"
    assert aemg(["prepare", "highpass_hz=15", "--source", "x", "--out", str(other), "--workers", "1", "lowpass_hz=400"]) == 0
    resolved = (other / "prepare.yaml").read_text()
    assert "highpass_hz: 15.0" in resolved and "lowpass_hz: 400.0" in resolved
    with pytest.raises(SystemExit):
        aemg(["corpus", "info", str(out), "--bogus"])


def test_ray_tasks_write_the_same_corpus_as_one_process(tmp_path, ray_local):
    jobs = [*JOBS, ArrayJob("dsa", "s3", "day1", fail="corrupt")]
    local = prepare(jobs, tmp_path / "local.zarr", workers=1, progress=False)
    distributed = prepare(jobs, tmp_path / "ray.zarr", workers=0, progress=False)
    assert sorted(distributed.written) == sorted(local.written) and distributed.failed == local.failed
    a, b = Corpus(tmp_path / "local.zarr"), Corpus(tmp_path / "ray.zarr")
    assert a.entries == b.entries
    for key in a.keys():
        assert np.array_equal(a.read(key), b.read(key))
        assert a.attrs(key) == b.attrs(key)
