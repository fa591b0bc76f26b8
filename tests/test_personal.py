"""A personal decoder end to end on synthetic data: `aemg finetune` from a BIDS-style folder of NumPy files with
events tables (and from a corpus, with other subjects as the source), `aemg predict` on a manifest recording, a
file and a live stream. The person wears a 64-electrode grid the pretraining never saw (coordinates, no
remapping); streaming decisions equal the offline causal ones and agree with the zero-phase ones after warm-up."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from aemg_dist import cli, predict
from aemg_dist.data import tokenize_corpus
from aemg_dist.decoder import Decoder
from aemg_dist.stream import zero_phase_decisions, zero_phase_windows
from aemg_dist.train import load_pretrain_config, pretrain
from preprocessing.prepare import prepare
from preprocessing.synthetic import SyntheticConfig, generate_recording, synthetic_jobs

TINY = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny.yaml"
FAST = ["train.base_steps=30", "train.adapt_steps=10", "train.batch_size=16"]
GRID = "synth_hdgrid"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path, list]:
    """A tiny pretraining on every synthetic device but the grid, and the grid person's raw recordings."""
    root = tmp_path_factory.mktemp("personal")
    jobs = synthetic_jobs(SyntheticConfig(scale="tiny"))
    assert prepare(jobs, root / "corpus.zarr", workers=1, progress=False).ok
    tokenize_corpus(root / "corpus.zarr", root / "tokens", workers=1, progress=False)
    cfg = load_pretrain_config(TINY, [f"data.tokens={root / 'tokens'}", f"run.out={root / 'pt'}", "dist.ray=false",
                                      "optim.max_steps=20", "data.batch_size=16", f"data.exclude_datasets=[{GRID}]"])
    pretrain(cfg)
    return root, root / "pt", [j for j in jobs if j.spec.name == GRID]


def bids_folder(root: Path, jobs: list) -> Path:
    """The grid person's recordings as a user would bring them: sub-XX/emg/*_emg.npy with BIDS events tables."""
    for job in jobs:
        raw = generate_recording(job)
        folder = root / "mygrid" / f"sub-{job.subject}" / "emg"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"sub-{job.subject}_task-gestures_emg.npy", raw.emg)
        lines = ["onset\tduration\ttrial_type\trepetition"] + [
            f"{s.start / raw.fs:.6f}\t{(s.stop - s.start) / raw.fs:.6f}\t{s.label_name}\t{s.rep}" for s in raw.segments]
        (folder / f"sub-{job.subject}_task-gestures_events.tsv").write_text("\n".join(lines) + "\n")
    spec = jobs[0].spec
    manifest = {"name": "mygrid", "folder": "mygrid", "pattern": "sub-{subject}/emg/sub-{s}_task-{session}_emg.npy",
                "group_by": ["subject", "session"], "reader": {"kind": "numpy"}, "fs": spec.fs, "units": spec.units,
                "electrodes": spec.layout, "labels": spec.label_names(), "rest_label": 0, "notch_hz": [50],
                "events": {"path": "{dir}/sub-{s}_task-{session}_events.tsv", "repetition": "repetition"}}
    (root / "mygrid.yaml").write_text(yaml.safe_dump(manifest))
    return root / "mygrid.yaml"


@pytest.fixture(scope="module")
def decoder_folder(pretrained, tmp_path_factory) -> tuple[Path, Path, Path]:
    root, run, jobs = pretrained
    manifest = bids_folder(root, jobs)
    out = root / "me"
    assert cli.main(["finetune", "--pretrained", str(run), "--manifest", str(manifest), "--source", str(root),
                     "--subject", "mygrid/s01", "--out", str(out), "--quiet", *FAST]) == 0
    return root, manifest, out


def test_finetune_writes_a_self_contained_decoder(decoder_folder, capsys) -> None:
    root, _, out = decoder_folder
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    decoder = Decoder.load(out)
    cfg = decoder.config
    assert cfg.n_channels == 64 and cfg.source_fs == 2000 and cfg.class_names[0] == "rest"
    assert cfg.provenance["recipe"].startswith("linear probe") and cfg.notch_hz == [50.0]
    heldout = cfg.provenance["heldout"]
    assert 0 <= heldout["balanced_accuracy"] <= 1 and np.sum(heldout["confusion"]) == heldout["n_test"] > 0
    # the calibration statistics travel with the model: channels the person's calibration saw flat are off
    assert len(cfg.center) == len(cfg.floor) == 64 and all(s > 0 for s in cfg.scale)


def test_finetune_from_a_corpus_with_other_subjects_as_source(pretrained, capsys) -> None:
    root, run, _ = pretrained
    out = root / "myo-s02"
    assert cli.main(["finetune", "--pretrained", str(run / "export"), "--corpus", str(root / "corpus.zarr"),
                     "--subject", "synth_myo/s02", "--out", str(out), "--quiet", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "source model on 2 other subject(s)" in printed and "confusion (rows true" in printed
    decoder = Decoder.load(out)
    rows = _predict(["--corpus", str(root / "corpus.zarr"), "--key", "synth_myo/s02/session1"], decoder, out, root)
    assert len(rows) > 10 and {r["label_name"] for r in rows} <= set(decoder.config.class_names)
    assert all(abs(sum(float(r[f"p_{n}"]) for n in decoder.config.class_names) - 1) < 1e-3 for r in rows)


def _predict(args: list[str], decoder: Decoder, model: Path, root: Path) -> list[dict]:
    out = root / "predictions.csv"
    assert cli.main(["predict", "--model", str(model), *args, "--out", str(out)]) == 0
    with out.open() as f:
        return list(csv.DictReader(f))


def test_predict_offline_file_and_stream_agree(decoder_folder) -> None:
    root, manifest, out = decoder_folder
    decoder = Decoder.load(out)
    npy = root / "mygrid" / "sub-s02" / "emg" / "sub-s02_task-gestures_emg.npy"
    raw = predict.manifest_recording(str(manifest), "mygrid/s02/gestures", str(root))
    offline = predict.decisions_of_recording(decoder, raw)
    from_file = _predict(["--file", str(npy), "--reader", "{kind: numpy}"], decoder, out, root)
    from_manifest = _predict(["--manifest", str(manifest), "--source", str(root), "--key", "mygrid/s02/gestures"],
                             decoder, out, root)
    assert [r["label"] for r in from_file] == [r["label"] for r in from_manifest] == \
        [str(decoder.config.class_ids[k]) for k in offline.labels]
    # the stream in ragged pieces (as a pipe delivers them): the same decisions, hop by hop
    stream = _Ragged(raw.emg.astype(np.float32).tobytes(), seed=1)
    text = io.StringIO()
    n = predict.stream_to_csv(decoder, stream, text)
    streamed = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert n == len(streamed) == offline.end_s.size
    warm = offline.end_s >= 0.5  # after the filters' warm-up (they are in fact equal from the first decision)
    np.testing.assert_allclose(np.array([[float(r[f"p_{c}"]) for c in decoder.config.class_names] for r in streamed]),
                               offline.probabilities, atol=2e-5)
    assert [r["label"] for r, w in zip(streamed, warm) if w] == [from_file[i]["label"] for i in np.flatnonzero(warm)]
    # against what fine-tuning saw (zero-phase filters): the same decisions once the causal filters have settled
    zero = zero_phase_decisions(decoder, zero_phase_windows(decoder, raw), raw.fs)
    agree = np.mean(zero.labels[warm] == offline.labels[warm])
    assert agree >= 0.8, agree


class _Ragged(io.RawIOBase):
    """A byte stream that returns pieces of random size, cutting through sample frames."""

    def __init__(self, data: bytes, seed: int):
        self.data, self.at, self.rng = data, 0, np.random.default_rng(seed)

    def readable(self) -> bool:
        return True

    def read1(self, n: int = -1) -> bytes:
        size = int(self.rng.integers(1, max(2, min(n, 3000))))
        piece = self.data[self.at:self.at + size]
        self.at += len(piece)
        return piece

    read = read1


def test_predict_stream_on_standard_input(decoder_folder) -> None:
    """The command as a pipe would run it: int16 frames on stdin, CSV rows on stdout."""
    root, manifest, out = decoder_folder
    raw = predict.manifest_recording(str(manifest), "mygrid/s01/gestures", str(root))
    samples = np.clip(np.round(raw.emg[: int(2.0 * raw.fs)] * 1e4), -32768, 32767).astype("<i2")
    done = subprocess.run([sys.executable, "-m", "aemg_dist.cli", "predict", "--model", str(out), "--stream",
                           "--dtype", "int16"], input=samples.tobytes(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rows = list(csv.DictReader(io.StringIO(done.stdout.decode())))
    assert len(rows) == 7 and float(rows[0]["end_s"]) == 0.5  # 2 s: windows of 0.5 s every 0.25 s
    assert "7 decisions written" in done.stderr.decode()


@pytest.mark.parametrize("content, problem", [
    ("{}", "format None is not 'aemg-decoder/1'"),
    ("not json", "not valid JSON"),
])
def test_a_bad_model_folder_is_one_line(decoder_folder, tmp_path, capsys, content, problem) -> None:
    _, _, out = decoder_folder
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    (bad / "config.json").write_text(content)
    assert cli.main(["predict", "--model", str(bad), "--stream"]) == 2
    assert problem in capsys.readouterr().err


def test_finetune_errors_are_one_line(pretrained, capsys) -> None:
    root, run, _ = pretrained
    assert cli.main(["finetune", "--pretrained", str(run), "--corpus", str(root / "corpus.zarr"), "--subject",
                     "synth_myo/s99", "--out", str(root / "nobody"), "--quiet"]) == 2
    assert "has no recording of synth_myo/s99" in capsys.readouterr().err
    assert cli.main(["finetune", "--pretrained", str(root), "--corpus", str(root / "corpus.zarr"), "--subject",
                     "synth_myo/s01", "--out", str(root / "nobody"), "--quiet"]) == 2
    assert "neither an `aemg pretrain` run nor its export/" in capsys.readouterr().err


def test_predict_from_a_socket_on_localhost(decoder_folder) -> None:
    import socket
    import threading
    import time

    root, manifest, out = decoder_folder
    decoder = Decoder.load(out)
    raw = predict.manifest_recording(str(manifest), "mygrid/s01/gestures", str(root))
    data = raw.emg[: int(raw.fs)].astype(np.float32).tobytes()  # 1 s
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def client() -> None:
        for _ in range(200):  # until the server listens
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
                    connection.sendall(data)
                return
            except ConnectionRefusedError:
                time.sleep(0.05)

    sender = threading.Thread(target=client)
    sender.start()
    with predict.listening(port) as source:
        assert predict.stream_to_csv(decoder, source, io.StringIO()) == 3  # windows ending at 0.5, 0.75, 1 s
    sender.join(timeout=30)


def test_a_decoder_from_before_the_summary_group_reads_event_tokens(decoder_folder, tmp_path) -> None:
    """A config.json written before tokens.window_summary existed was made without the summary group: it loads with
    the setting off, not with today's default (on); one that holds the setting loads as written."""
    _, _, out = decoder_folder
    assert Decoder.load(out).config.tokens.window_summary  # fine-tuned on today's default tokens
    older = tmp_path / "older"
    older.mkdir()
    (older / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    values = json.loads((out / "config.json").read_text())
    del values["tokens"]["window_summary"]
    (older / "config.json").write_text(json.dumps(values))
    assert not Decoder.load(older).config.tokens.window_summary


def test_an_export_alone_says_how_its_tokens_were_made(pretrained, tmp_path) -> None:
    """Pretraining records its token folder's settings in export/config.json, and fine-tuning from an export copied
    without its run folder tokenizes as recorded (an export without the record falls back to the defaults)."""
    from aemg_dist.artifacts import TokenizeConfig
    from aemg_dist.finetune import pretrained_settings
    from aemg_dist.model.export import read_tokenize_settings

    _, run, _ = pretrained
    assert read_tokenize_settings(run / "export")["tokens"]["window_summary"] is True  # the fixture's default tokens
    alone = tmp_path / "export"
    shutil.copytree(run / "export", alone)
    meta = json.loads((alone / "config.json").read_text())
    meta["tokenize"]["tokens"]["window_summary"] = False
    (alone / "config.json").write_text(json.dumps(meta))
    assert not pretrained_settings(alone)[1].tokens.window_summary
    del meta["tokenize"]
    (alone / "config.json").write_text(json.dumps(meta))
    assert pretrained_settings(alone)[1] == TokenizeConfig()
