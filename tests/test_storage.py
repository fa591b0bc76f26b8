"""Paths as URIs: the storage helpers (on fsspec's in-memory filesystem, and on S3), a corpus written to and
read from a URI, and (slow) `aemg prepare` -> `aemg tokenize` -> `aemg pretrain` -> `aemg evaluate` with every
path on an S3 endpoint emulated on 127.0.0.1 (moto's server mode); no real cloud."""

import csv
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from aemg_dist import storage
from preprocessing.corpus import Corpus, check_corpus
from preprocessing.prepare import prepare
from preprocessing.synthetic import SyntheticConfig, synthetic_jobs

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "pretrain" / "tiny.yaml"
BUCKET = "aemg-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint on 127.0.0.1 with one bucket; the environment points boto, s3fs and pyarrow at it."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] not installed (the dev extra)")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs", reason="s3fs not installed (the dev / cloud extra)")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    # credentials in a file, as storage.FORWARDED_ENV expects (secrets never travel in a Ray runtime env)
    credentials = tmp_path_factory.mktemp("aws") / "credentials"
    credentials.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
           "AWS_REGION": "us-east-1"}
    patch = pytest.MonkeyPatch()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        patch.delenv(name, raising=False)
    for name, value in env.items():
        patch.setenv(name, value)
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield {"uri": f"s3://{BUCKET}", "env": env}
    finally:
        patch.undo()
        server.stop()


def test_helpers_treat_uris_and_local_paths_alike(s3, tmp_path):
    for base in (f"{s3['uri']}/helpers", str(tmp_path / "helpers")):
        storage.write_text(storage.join(base, "a.json"), "{}")
        storage.write_text(storage.join(base, "b.parquet"), "x")
        storage.write_text(storage.join(base, ".b.parquet.tmp"), "half")  # a temporary file: never listed
        assert storage.exists(storage.join(base, "a.json")) and storage.read_text(storage.join(base, "a.json")) == "{}"
        assert storage.listdir(base, ".parquet") == [storage.join(base, "b.parquet")]
        assert storage.listdir(storage.join(base, "nothing")) == []
    assert storage.absolute("s3://b/x/") == "s3://b/x" and storage.absolute("rel") == str(Path("rel").resolve())
    assert storage.is_uri("gs://b/x") and not storage.is_uri("/x") and not storage.is_uri("file:///x")


def test_a_corpus_on_s3_reads_like_the_local_one(s3, tiny_corpus):
    remote = f"{s3['uri']}/read/corpus.zarr"
    storage.upload(tiny_corpus, remote)
    local, there = Corpus(tiny_corpus), Corpus(remote)
    assert there.keys() == local.keys() and str(there.path) == remote
    key = local.keys()[0]
    assert np.array_equal(there.read(key, 100, 2100), local.read(key, 100, 2100))
    assert there.attrs(key) == local.attrs(key)


def test_shared_storage_is_required_only_of_local_paths_on_many_nodes(ray_local, tmp_path):
    storage.require_shared("s3://any/where", "run.out")  # URIs are shared by definition
    storage.require_shared(tmp_path / "run", "run.out")  # one node: any local path will do, untouched
    assert not (tmp_path / "run").exists()


def _memory(tmp_path: Path) -> str:
    """A folder of fsspec's in-memory filesystem (one per process), unique to the test."""
    return f"memory://{tmp_path.name}"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The system temporary folder (local_copy's cache, StagedFolder's staging) inside tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path / "tmp"


def test_prepare_writes_a_corpus_to_a_uri(tmp_path, tiny_corpus):
    uri = f"{_memory(tmp_path)}/corpus.zarr"
    jobs = [j for j in synthetic_jobs(SyntheticConfig(scale="tiny")) if j.subject_index < 2][:3]
    report = prepare(jobs, uri, workers=1, progress=False)
    assert report.ok and report.out == uri and len(report.written) == 3
    assert check_corpus(uri) == []
    there, local = Corpus(uri), Corpus(tiny_corpus)  # the same recordings as the session's local corpus
    assert there.keys() == sorted(j.key for j in jobs)
    for key in there.keys():
        assert np.array_equal(there.read(key), local.read(key)) and there.attrs(key) == local.attrs(key)
    again = prepare(jobs, uri, workers=1, progress=False)  # complete recordings on the URI are seen as such
    assert sorted(again.skipped) == sorted(j.key for j in jobs) and not again.written


def test_local_copy_fetches_a_uri_once_per_version(tmp_path, cache, monkeypatch):
    fs, _ = storage.filesystem("memory://")
    remote = f"{_memory(tmp_path)}/run/export"
    storage.write_text(f"{remote}/config.json", "v1")
    storage.write_text(f"{remote}/sub/weights", "w")
    first = storage.local_copy(remote)
    assert first.parent == cache / "aemg-cache" and (first / "config.json").read_text() == "v1"
    assert (first / "sub" / "weights").read_text() == "w"
    monkeypatch.setattr(type(fs), "get", lambda *a, **k: pytest.fail("fetched again"))
    assert storage.local_copy(remote + "/") == first  # cached: no second download
    monkeypatch.undo()
    storage.write_text(f"{remote}/config.json", "v2")  # rewritten (a longer pretraining to the same run.out)
    second = storage.local_copy(remote)
    assert second != first and (second / "config.json").read_text() == "v2" and (first / "config.json").read_text() == "v1"
    assert not [p for p in (cache / "aemg-cache").iterdir() if p.name.startswith(".")]  # no staging left
    assert storage.local_copy(tmp_path) == tmp_path  # a local folder is read where it is
    with pytest.raises(FileNotFoundError, match="nothing"):
        storage.local_copy(f"{_memory(tmp_path)}/nothing")


def test_staged_folder_uploads_whole_files_of_a_uri(tmp_path, cache):
    remote = f"{_memory(tmp_path)}/out"
    storage.write_text(f"{remote}/rows.jsonl", "a\n")
    files = storage.StagedFolder(remote)
    assert files.path == remote and files.local.parent == cache
    files.fetch("rows.jsonl")
    files.fetch("missing.txt")  # nothing there yet: nothing fetched
    assert sorted(p.name for p in files.local.iterdir()) == ["rows.jsonl"]
    with (files.local / "rows.jsonl").open("a") as f:
        f.write("b\n")
    assert storage.read_text(f"{remote}/rows.jsonl") == "a\n"  # nothing reaches the URI before sync
    files.sync("rows.jsonl", "missing.txt")
    assert storage.read_text(f"{remote}/rows.jsonl") == "a\nb\n" and not storage.exists(f"{remote}/missing.txt")
    files.close()
    assert not files.local.exists()
    local = storage.StagedFolder(tmp_path / "here")
    assert local.path == local.local == tmp_path / "here"  # a local folder is written in place
    local.close()


@pytest.mark.slow
@pytest.mark.claim("every path may be a URI: prepare, tokenize, pretrain, evaluate on S3")
def test_prepare_tokenize_pretrain_evaluate_with_every_path_on_s3(s3, tmp_path):
    base = f"{s3['uri']}/pipeline"
    env = {**os.environ, **s3["env"], "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    aemg = [sys.executable, "-m", "aemg_dist.cli"]
    # the evaluated subject is left out of pretraining, so the fold passes the pretraining guard
    pretrain = [*aemg, "pretrain", "--config", str(TINY), f"data.tokens={base}/tokens", f"run.out={base}/run",
                "run.checkpoint_every=5", "run.val_every=5", "run.log_every=5", "data.batch_size=16",
                "data.exclude_subjects=[synth_myo/s01]"]
    evaluate = [*aemg, "evaluate", "--checkpoint", f"{base}/run", "--corpus", f"{base}/corpus.zarr",
                "--out", f"{base}/results", "--methods", "aemg_finetune,td_lda", "--budgets", "0,10",
                "--datasets", "synth_myo", "--subjects", "synth_myo/s01", "--workers", "2", "--quiet",
                "windows.length_s=0.2", "windows.stride_s=0.1", "windows.margin_s=0.1", "train.base_steps=15",
                "train.adapt_steps=5", "train.batch_size=16"]
    commands = [
        [*aemg, "prepare", "--source", "synthetic", "--scale", "tiny", "--out", f"{base}/corpus.zarr",
         "--workers", "2", "--quiet"],
        [*aemg, "tokenize", "--corpus", f"{base}/corpus.zarr", "--out", f"{base}/tokens", "--workers", "2", "--quiet"],
        [*pretrain, "optim.max_steps=10"],
        [*pretrain, "optim.max_steps=15"],  # the same run again, longer: resumes from its checkpoint on S3
        evaluate,  # its fold runs in a Ray task that fetches the checkpoint's export/ from S3 itself
        evaluate,  # again: resumes from the trials.jsonl on S3, with nothing left to run
    ]
    outputs = []
    for command in commands:  # each starts its own local Ray, which gets the S3 settings from ensure_ray
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        outputs.append(done.stdout)
    assert check_corpus(f"{base}/corpus.zarr") == [] and len(Corpus(f"{base}/corpus.zarr")) == 12
    assert storage.exists(f"{base}/corpus.zarr/prepare.yaml")
    manifest = json.loads(storage.read_text(f"{base}/tokens/tokens.json"))
    assert manifest["windows"] > 0 and len(storage.listdir(f"{base}/tokens", ".parquet")) == len(manifest["files"])
    for name in ("config.yaml", "metrics.csv", "loss.png", "codebook.png", "export/model.safetensors",
                 "export/config.json", "workers/rank-0.json", "workers/rank-1.json"):
        assert storage.exists(f"{base}/run/{name}"), name
    fs, inner = storage.filesystem(f"{base}/run/ray")
    assert any("checkpoint_" in p for p in fs.find(inner))  # Ray Train's checkpoints went to S3 too
    rows = storage.read_text(f"{base}/run/metrics.csv").strip().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["5", "10", "15"]  # the second run went on from step 10
    assert json.loads(storage.read_text(f"{base}/run/workers/rank-0.json"))["start_step"] == 10
    summary = list(csv.DictReader(io.StringIO(storage.read_text(f"{base}/results/summary.csv"))))
    assert sorted((r["method"], r["subject"], r["budget"]) for r in summary) == [
        (m, "s01", b) for m in ("aemg_finetune", "td_lda") for b in ("0.0", "10.0")]
    assert {r["pretraining"] for r in summary if r["method"] == "aemg_finetune"} == {"unseen_subject"}
    assert "aemg_finetune" in storage.read_text(f"{base}/results/report.md")
    for name in ("trials.jsonl", "evaluate.yaml", "low_label.png", "windows/tokens.json"):
        assert storage.exists(f"{base}/results/{name}"), name
    assert "1 fold(s) evaluated now" in outputs[4] and "0 fold(s) evaluated now" in outputs[5]
    assert f"1 fold(s) already in {base}/results/trials.jsonl, 0 to run" in outputs[5]
    assert not list(tmp_path.iterdir())  # nothing landed in the working directory
