import numpy as np
import pytest
import yaml

from aemg_dist.artifacts import TokenizeConfig, load_tokenize_config, read_token_table, table_to_windows
from aemg_dist.config import ConfigError, load_config, save_config
from aemg_dist.data import (group_recordings, make_shards, plan_recording, read_shard, stretch_shards, tokenize_corpus,
                            tokenize_rows)
from aemg_dist.events import EventConfig
from aemg_dist.tokens import TokenConfig, tokenize_window
from aemg_dist.windows import WindowConfig, cut_windows, recording_spans
from preprocessing.corpus import Corpus
from preprocessing.recording import Segment


def test_chunks_tile_each_piece_between_joins():
    cfg = WindowConfig(kind="chunks", length_s=1.0)
    spans = recording_spans(10_500, [], joins=[4_200], cfg=cfg)
    w = cut_windows(spans, 1000.0, cfg)
    assert list(zip(w.start, w.stop)) == [(0, 1000), (1000, 2000), (2000, 3000), (3000, 4000),
                                          (4200, 5200), (5200, 6200), (6200, 7200), (7200, 8200), (8200, 9200), (9200, 10200)]
    # the 200-sample tails are below min_fraction; a tail of half a chunk is kept
    w = cut_windows(recording_spans(2_500, [], [], cfg), 1000.0, cfg)
    assert list(zip(w.start, w.stop)) == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert (w.label == -1).all()


def test_labeled_windows_stay_inside_segments_away_from_transitions():
    cfg = WindowConfig(kind="labeled", length_s=0.5, stride_s=0.25, margin_s=0.25, include_rest=False)
    segments = [Segment(0, 3000, 0, "rest", 0), Segment(3000, 5000, 2, "fist", 0),
                Segment(5000, 5800, 3, "open", 0), Segment(5800, 9000, 3, "open", 1)]
    w = cut_windows(recording_spans(9000, segments, [], cfg, rest_label=0), 1000.0, cfg)
    assert 0 not in w.label  # rest excluded
    assert w.skipped_spans == 1  # 800 samples - 2 x 250 margin < one window
    for start, stop, label in zip(w.start, w.stop, w.label):
        seg = next(s for s in segments if s.start <= start < s.stop)
        assert seg.label == label and stop - start == 500
        assert start >= seg.start + 250 and stop <= seg.stop - 250
    assert list(w.start[w.label == 2]) == [3250, 3500, 3750, 4000, 4250]


def test_an_event_crossing_a_chunk_border_is_split_not_lost_or_duplicated():
    fs = 1000.0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 2)).astype(np.float32) * 0.3
    x[1700:2400, 0] += rng.standard_normal(700).astype(np.float32) * 6  # one burst across the 2 s border
    coords = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    cfg, events_only = EventConfig(), TokenConfig(window_summary=False)  # the event tokens, without the summary group
    whole = tokenize_window(x, fs, coords, 1000.0, floor=np.full(2, 0.3, np.float32), ev_cfg=cfg, tok_cfg=events_only)
    halves = [tokenize_window(x[a:a + 2000], fs, coords, 1000.0, floor=np.full(2, 0.3, np.float32), ev_cfg=cfg,
                              tok_cfg=events_only) for a in (0, 2000)]
    active = [(w.onset_s[w.active & (w.channel == 0)], w.duration_s[w.active & (w.channel == 0)]) for w in halves]
    assert len(whole.onset_s[whole.active]) == 1 and all(len(on) == 1 for on, _ in active)
    (on_a, dur_a), (on_b, dur_b) = active
    assert on_a[0] + dur_a[0] == pytest.approx(2.0)  # first part ends at the border...
    assert on_b[0] == pytest.approx(0.0)  # ...second part opens the next chunk
    assert dur_a[0] + dur_b[0] == pytest.approx(whole.duration_s[whole.active][0], abs=0.011)


@pytest.mark.parametrize("task_s", [7.0, 25.0, 1e6])
def test_read_task_groups_cover_every_window_once(tiny_corpus, task_s):
    """Groups of about task_s seconds tile every recording (cut where a group is full), and the shards of their
    stretches hold every window of the corpus exactly once."""
    corpus, cfg = Corpus(tiny_corpus), TokenizeConfig()
    keys = corpus.keys()
    groups = group_recordings(corpus, keys, task_s)
    for key in keys:
        pieces = [(s.start, s.stop) for g in groups for s in g if s.key == key]
        assert pieces[0][0] == 0 and pieces[-1][1] == corpus.entry(key).n_samples
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))  # contiguous, no overlap
    seconds = [sum((s.stop - s.start) / corpus.entry(s.key).fs for s in g) for g in groups]
    assert all(abs(t - task_s) < 1e-3 for t in seconds[:-1]) and 0 < seconds[-1] <= task_s + 1e-3
    plans = {key: plan_recording(key, str(tiny_corpus), cfg) for key in keys}
    starts = [(s.key, int(plans[s.key].windows.start[i])) for g in groups for s in g
              for shard in stretch_shards(plans[s.key], s, shard_s=3.0) for i in range(shard.first, shard.last)]
    assert sorted(starts) == sorted((k, int(t)) for k in keys for t in plans[k].windows.start)
    assert len(set(starts)) == len(starts)


def test_sharding_does_not_change_the_tokens(tiny_corpus, tmp_path):
    one = tokenize_corpus(tiny_corpus, tmp_path / "one", TokenizeConfig(shard_s=1000.0), workers=1, progress=False)
    many = tokenize_corpus(tiny_corpus, tmp_path / "many", TokenizeConfig(shard_s=3.0), workers=1, progress=False)
    assert one.windows == many.windows and one.tokens == many.tokens > 0
    assert _sorted_rows(tmp_path / "one") == _sorted_rows(tmp_path / "many")


def test_stored_rows_reload_as_the_tokens_of_each_window(tiny_corpus):
    """A batch interleaving the windows of two recordings (tokenized one vectorized call per recording) gives each
    row the tokens of its own window, in the batch's order."""
    corpus, cfg = Corpus(tiny_corpus), TokenizeConfig()
    keys = corpus.keys()[:2]
    plans = {key: plan_recording(key, str(tiny_corpus), cfg) for key in keys}
    parts = [read_shard(corpus, plans[key], make_shards(plans[key], 10.0)[1]) for key in keys]
    n = min(len(part["key"]) for part in parts)
    order = [(p, i) for i in range(n) for p in range(2)]  # a0 b0 a1 b1 ...
    rows = {name: np.array([parts[p][name][i] for p, i in order], dtype=parts[0][name].dtype) for name in parts[0]}
    table = tokenize_rows(rows, plans, cfg)
    assert table.column("key").to_pylist() == [keys[p] for p, _ in order]
    assert table.column("start").to_pylist() == [int(parts[p]["start"][i]) for p, i in order]
    for i, window in enumerate(table_to_windows(table)):
        plan = plans[rows["key"][i]]
        x = corpus.read(rows["key"][i], int(rows["start"][i]), int(rows["stop"][i]))
        direct = tokenize_window(x, plan.fs, plan.coords, plan.source_fs, plan.channel_ok, cfg.events, cfg.tokens, plan.floor)
        assert window.n_tokens == direct.n_tokens
        for name in ("features", "coords", "onset_s", "duration_s", "rank", "group", "channel", "active"):
            assert np.array_equal(getattr(window, name), getattr(direct, name)), name


def test_ray_data_equals_in_process_token_for_token(tiny_corpus, tmp_path, ray_local):
    local = tokenize_corpus(tiny_corpus, tmp_path / "local", workers=1, progress=False)
    distributed = tokenize_corpus(tiny_corpus, tmp_path / "ray", workers=0, progress=False)
    assert (distributed.windows, distributed.tokens) == (local.windows, local.tokens)
    assert _sorted_rows(tmp_path / "ray") == _sorted_rows(tmp_path / "local")
    assert (tmp_path / "ray" / "tokens.json").exists() and (tmp_path / "ray" / "tokenize.yaml").exists()


def test_labeled_windows_carry_their_labels(tiny_corpus, tmp_path):
    cfg = load_config(TokenizeConfig, None, ["windows.kind=labeled", "windows.length_s=0.5", "windows.stride_s=0.25"])
    tokenize_corpus(tiny_corpus, tmp_path / "lab", cfg, workers=1, progress=False)
    table = read_token_table(tmp_path / "lab")
    corpus = Corpus(tiny_corpus)
    for key, start, label in zip(*(table.column(c).to_pylist() for c in ("key", "start", "label"))):
        seg = next(s for s in corpus.segments(key) if s.start <= start < s.stop)
        assert seg.label == label


def test_refuses_to_mix_with_existing_shards_and_bad_configs(tiny_corpus, tmp_path):
    tokenize_corpus(tiny_corpus, tmp_path / "t", workers=1, progress=False)
    with pytest.raises(FileExistsError):
        tokenize_corpus(tiny_corpus, tmp_path / "t", workers=1, progress=False)
    with pytest.raises(ConfigError, match="window kind"):
        load_config(TokenizeConfig, None, ["windows.kind=sliding"])
    with pytest.raises(ConfigError, match="shard_s"):
        load_config(TokenizeConfig, None, ["shard_s=0"])


def _sorted_rows(folder):
    table = read_token_table(folder).sort_by([("key", "ascending"), ("start", "ascending")])
    return table.to_pylist()


def test_a_token_folder_from_before_the_summary_group_is_read_as_event_tokens(tmp_path):
    """tokenize.yaml written before tokens.window_summary existed lacks the key: those tokens were made without the
    summary group, so it is read with the setting off, not with today's default (on); a file with the key wins."""
    today = tmp_path / "today.yaml"
    save_config(TokenizeConfig(), today)
    assert load_tokenize_config(today).tokens.window_summary
    values = yaml.safe_load(today.read_text())
    del values["tokens"]["window_summary"]
    older = tmp_path / "older.yaml"
    older.write_text(yaml.safe_dump(values))
    assert load_tokenize_config(older) == TokenizeConfig(tokens=TokenConfig(window_summary=False))

