"""Paths as URIs: the storage helpers, a corpus read from S3, and (slow) `aemg tokenize` -> `aemg pretrain`
with every path on an S3 endpoint emulated on 127.0.0.1 (moto's server mode); no real cloud."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aemg_dist import storage
from preprocessing.corpus import Corpus

moto_server = pytest.importorskip("moto.server", reason="moto[server] not installed (the dev extra)")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs", reason="s3fs not installed (the dev / cloud extra)")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "pretrain" / "tiny.yaml"
BUCKET = "aemg-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint on 127.0.0.1 with one bucket; the environment points boto, s3fs and pyarrow at it."""
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


@pytest.mark.slow
def test_tokenize_then_pretrain_with_every_path_on_s3(s3, tiny_corpus, tmp_path):
    base = f"{s3['uri']}/pipeline"
    storage.upload(tiny_corpus, f"{base}/corpus.zarr")
    env = {**os.environ, **s3["env"], "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    aemg = [sys.executable, "-m", "aemg_dist.cli"]
    pretrain = [*aemg, "pretrain", "--config", str(TINY), f"data.tokens={base}/tokens", f"run.out={base}/run",
                "run.checkpoint_every=5", "run.val_every=5", "run.log_every=5", "data.batch_size=16"]
    commands = [
        [*aemg, "tokenize", "--corpus", f"{base}/corpus.zarr", "--out", f"{base}/tokens", "--workers", "2", "--quiet"],
        [*pretrain, "optim.max_steps=10"],
        [*pretrain, "optim.max_steps=15"],  # the same run again, longer: resumes from its checkpoint on S3
    ]
    for command in commands:  # each starts its own local Ray, which gets the S3 settings from ensure_ray
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
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
    assert not list(tmp_path.iterdir())  # nothing landed in the working directory
