"""Fault tolerance: a training worker killed by its pid is replaced and the run finishes from the last
checkpoint; a killed tokenization is finished by running it again, redoing only what is missing."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from aemg_dist.artifacts import TokenizeConfig, read_token_table
from aemg_dist.data import tokenize_corpus
from aemg_dist.train import load_pretrain_config, pretrain
from runs import metric_steps, reached_before_restart, registered_step

TINY = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny.yaml"
CHECKPOINT_EVERY = 10


@pytest.mark.slow
def test_a_killed_training_worker_is_replaced_and_resumes_from_the_last_checkpoint(tiny_corpus, tmp_path, ray_local,
                                                                                   monkeypatch):
    # the controller collects reported checkpoints every health check (2 s by default); a checkpoint it
    # has not collected yet is not "the last checkpoint" of the run, so collect quickly
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    tokenize_corpus(tiny_corpus, tmp_path / "tokens", workers=1, progress=False)
    out = tmp_path / "run"
    max_steps = 80
    cfg = load_pretrain_config(TINY, [
        f"data.tokens={tmp_path / 'tokens'}", f"run.out={out}", "data.batch_size=16", "optim.warmup_steps=5",
        f"optim.max_steps={max_steps}", f"run.checkpoint_every={CHECKPOINT_EVERY}", "run.log_every=1",
        "run.val_every=1000", "model.dead_code_steps=1000", "dist.max_failures=1"])
    finished: dict = {}
    trainer = threading.Thread(target=lambda: finished.update(result=pretrain(cfg)))
    trainer.start()
    rank_file = out / "workers" / "rank-1.json"
    deadline = time.time() + 180
    while True:  # kill between checkpoints: one registered, the next not yet reached
        registered = registered_step(out)
        reached = max(metric_steps(out), default=0)
        if registered >= CHECKPOINT_EVERY and reached < registered + CHECKPOINT_EVERY - 2:
            break
        assert time.time() < deadline and trainer.is_alive(), "no moment between two checkpoints was caught"
        time.sleep(0.02)
    victim = json.loads(rank_file.read_text())
    os.kill(victim["pid"], signal.SIGKILL)  # a real worker process dies, as on a lost node
    trainer.join(timeout=300)
    assert not trainer.is_alive()

    result = finished["result"]
    assert result.steps == max_steps and result.checkpoint
    replacement = json.loads(rank_file.read_text())
    assert replacement["pid"] != victim["pid"]
    resumed = replacement["start_step"]
    reached = reached_before_restart(metric_steps(out), resumed, max_steps)
    assert resumed == registered  # from the last checkpoint, not an older one
    assert reached - resumed < CHECKPOINT_EVERY  # less than one checkpoint interval was trained twice


def test_a_killed_tokenization_is_finished_by_running_it_again(tiny_corpus, tmp_path, monkeypatch):
    import aemg_dist.data as data

    cfg = TokenizeConfig(shard_s=5.0, task_s=10.0)  # several part files even on the tiny corpus
    whole = tokenize_corpus(tiny_corpus, tmp_path / "whole", cfg, workers=1, progress=False)
    assert len(whole.files) >= 4
    written, real_write_part = [], data.write_part

    class Killed(Exception):
        pass

    def dies_after_two_parts(out, table):
        if len(written) == 2:
            raise Killed  # the process dies while tokenizing the third part
        written.append(real_write_part(out, table))
        return written[-1]

    monkeypatch.setattr(data, "write_part", dies_after_two_parts)
    with pytest.raises(Killed):
        tokenize_corpus(tiny_corpus, tmp_path / "resumed", cfg, workers=1, progress=False)
    assert not (tmp_path / "resumed" / "tokens.json").exists()  # not marked complete
    monkeypatch.setattr(data, "write_part", lambda out, table: written.append(real_write_part(out, table)) or written[-1])
    resumed = tokenize_corpus(tiny_corpus, tmp_path / "resumed", cfg, workers=1, progress=False)
    done_before = sum(f["rows"] for f in whole.files if any(w.endswith(f["path"]) for w in written[:2]))
    assert resumed.resumed_windows == done_before > 0  # the first run's parts were kept, not redone
    assert len(written) == 2 + len(whole.files) - 2  # only the missing parts were written
    key = [("key", "ascending"), ("start", "ascending")]
    assert read_token_table(tmp_path / "resumed").sort_by(key).equals(read_token_table(tmp_path / "whole").sort_by(key))
    assert (resumed.windows, resumed.tokens) == (whole.windows, whole.tokens)
    with pytest.raises(FileExistsError, match="complete tokenization"):
        tokenize_corpus(tiny_corpus, tmp_path / "resumed", cfg, workers=1, progress=False)
    (tmp_path / "resumed" / "tokens.json").unlink()
    with pytest.raises(FileExistsError, match="another tokenization"):
        tokenize_corpus(tiny_corpus, tmp_path / "resumed", TokenizeConfig(shard_s=7.0), workers=1, progress=False)
