"""Evaluation core: folds, calibration budgets, TD features, LDA and metrics (fast, numpy only)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from aemg_dist.evaluation import LDA, balanced_accuracy, calibration_split, loso_folds, macro_f1, td_features
from aemg_dist.evaluation.folds import GUARD, N_PSEUDO_REPS, calibration_seconds, reference_split

BUDGETS = (0, 1, 5, 10, 25, 50, 100)
LENGTH, STRIDE = 100, 50  # windows of 100 samples every 50 (overlapping, as the evaluation's)


def _table(with_reps: bool = True) -> dict[str, np.ndarray]:
    """Two datasets: 'ninapro' (3 subjects x 2 sessions, 4 labels x 6 reps x 8 windows, plus
    unlabeled windows) and 'multiday' (1 subject, 6 sessions, 3 labels x 40 windows, no rep ids)."""
    rows = {c: [] for c in ("dataset", "subject", "session", "key", "start", "label", "rep")}

    def add(ds, subj, sess, label, rep, start):
        rows["dataset"].append(ds); rows["subject"].append(subj); rows["session"].append(sess)
        rows["key"].append(f"{ds}/{subj}/{sess}"); rows["start"].append(start)
        rows["label"].append(label); rows["rep"].append(rep)

    for s in range(3):
        for sess in range(2):
            t = 0
            for rep in range(6):
                for label in range(4):
                    for _ in range(8):
                        add("ninapro", f"s{s}", f"d{sess}", label, rep if with_reps else -1, t); t += STRIDE
                    t += 2 * LENGTH  # the next segment: margins at both ends
            add("ninapro", f"s{s}", f"d{sess}", -1, -1, t)  # unlabeled: in no fold
    for sess in range(6):
        t = 0
        for label in range(3):
            for _ in range(40):
                add("multiday", "m0", f"day{sess}", label, -1, t); t += STRIDE
            t += 2 * LENGTH
    table = {k: np.asarray(v) for k, v in rows.items()}
    return {**table, "stop": table["start"] + LENGTH, "fs": np.full(table["start"].size, 1000.0)}


def test_loso_no_subject_in_train_and_heldout():
    table = _table()
    folds = loso_folds(pa.table(table), "ninapro")  # pyarrow input
    assert sorted(f.held_out for f in folds) == ["s0", "s1", "s2"]
    labeled = np.flatnonzero((table["dataset"] == "ninapro") & (table["label"] >= 0))
    for f in folds:
        assert set(table["subject"][f.heldout_idx]) == {f.held_out}
        assert f.held_out not in set(table["subject"][f.train_idx])
        assert set(table["dataset"][f.train_idx]) == {"ninapro"}
        assert np.array_equal(np.sort(np.concatenate([f.train_idx, f.heldout_idx])), labeled)
    assert np.array_equal(np.sort(np.concatenate([f.heldout_idx for f in folds])), labeled)


def test_single_subject_dataset_is_leave_one_session_out():
    table = _table()
    folds = loso_folds(table, "multiday")
    assert len(folds) == 6
    for f in folds:
        assert set(table["session"][f.heldout_idx]) == {f.held_out}
        assert f.held_out not in set(table["session"][f.train_idx])
        assert len(f.train_idx) == 5 * 120 and len(f.heldout_idx) == 120


def _rep_units(table, idx):
    return {(table["key"][i], table["label"][i], table["rep"][i]) for i in idx}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_budgets_nested_disjoint_contiguous_and_same_test(seed):
    table = _table()
    fold = loso_folds(table, "ninapro")[1]
    splits = {b: calibration_split(fold, b, seed) for b in BUDGETS}
    calib0, test0 = splits[0]
    assert calib0.size == 0 and test0.size > 0
    for lo, hi in zip(BUDGETS, BUDGETS[1:]):
        assert set(splits[lo][0]) <= set(splits[hi][0])  # nested
    for b, (calib, test) in splits.items():
        assert np.array_equal(test, test0)  # every budget scored on the same windows
        assert not set(calib) & set(test)
        assert not _rep_units(table, calib) & _rep_units(table, test)  # no shared repetition
        assert set(calib) | set(test) <= set(fold.heldout_idx)
        if b > 0:
            assert set(table["label"][calib]) == {0, 1, 2, 3}  # at least one window per label
            for lab in range(4):  # contiguous: within a repetition, the chosen windows are its first ones
                mine = calib[table["label"][calib] == lab]
                for key, _, rep in _rep_units(table, mine):
                    whole = np.flatnonzero((table["key"] == key) & (table["label"] == lab) & (table["rep"] == rep))
                    chosen = np.isin(whole, mine)
                    assert np.array_equal(chosen, np.arange(whole.size) < chosen.sum())
    # 12 repetitions per label (2 sessions x 6): test = round(0.33 * 12) = 4; the pool is 8 x 8 = 64 windows
    n_reps = lambda idx, lab: len({u for u in _rep_units(table, idx) if u[1] == lab})
    assert all(n_reps(test0, lab) == 4 for lab in range(4))
    per_label = {b: {int((table["label"][splits[b][0]] == lab).sum()) for lab in range(4)} for b in BUDGETS}
    # budgets in labeled time: round(b % of 64) windows per label, at least one
    assert per_label == {0: {0}, 1: {1}, 5: {3}, 10: {6}, 25: {16}, 50: {32}, 100: {64}}


def test_calibration_deterministic_per_seed():
    table = _table()
    fold = loso_folds(table, "ninapro")[0]
    a = calibration_split(fold, 25, seed=3)
    b = calibration_split(loso_folds(table, "ninapro")[0], 25, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    others = [calibration_split(fold, 25, seed=s)[0] for s in range(4, 12)]
    assert any(not np.array_equal(a[0], o) for o in others)


def _closest(table, calib, test):
    """Least distance in samples between a calibration and a test window of the same recording (negative: overlap)."""
    gaps = [max(table["start"][t] - table["stop"][c], table["start"][c] - table["stop"][t])
            for c in calib for t in test if table["key"][c] == table["key"][t]]
    return min(gaps)


@pytest.mark.parametrize("gap_s", [None, 0.15])
def test_no_reps_pseudo_repetitions_keep_a_gap(gap_s):
    table = _table()
    fold = loso_folds(table, "multiday", gap_s=gap_s)[2]
    gap = LENGTH if gap_s is None else gap_s * 1000
    guard = fold.heldout_unit == GUARD
    assert 0 < guard.sum() < guard.size / 3
    # N_PSEUDO_REPS contiguous pieces per label, guards between them
    assert N_PSEUDO_REPS == 3 and np.unique(fold.heldout_unit[~guard]).size == 3 * 3
    for seed in range(3):
        for b in (1, 10, 100):
            calib, test = calibration_split(fold, b, seed)
            assert not set(fold.heldout_idx[guard]) & (set(calib) | set(test))
            assert _closest(table, calib, test) >= gap
        reference = reference_split(fold, 0, seed)
        assert np.array_equal(reference, calibration_split(fold, 1, seed)[0])  # 0 %: the 1 % windows, unlabeled
        assert not set(reference) & set(calibration_split(fold, 0, seed)[1])


def test_calibration_seconds_count_each_sample_once():
    start = np.array([0, 50, 100, 1000, 0])
    key = np.array(["a", "a", "a", "a", "b"])
    label = np.array([0, 0, 0, 0, 1])
    # label 0: [0, 200) and [1000, 1100) = 300 samples; label 1: 100 samples; mean over 2 labels = 200
    assert calibration_seconds(start, start + LENGTH, key, label, fs=1000.0) == pytest.approx(0.2)
    assert calibration_seconds(start[:0], start[:0], key[:0], label[:0], fs=1000.0) == 0.0


# ---------------------------------------------------------------- TD features


def _td_loop(x: np.ndarray, threshold: float) -> np.ndarray:
    n, t_len, c = x.shape
    out = np.zeros((n, 5, c))
    for i in range(n):
        for ch in range(c):
            s = x[i, :, ch].astype(np.float64)
            rms = np.sqrt(np.mean(s * s))
            thr = threshold * rms
            zc = sum(1 for t in range(t_len - 1) if s[t] * s[t + 1] < 0 and abs(s[t] - s[t + 1]) >= thr)
            ssc = sum(1 for t in range(1, t_len - 1)
                      if (s[t] - s[t - 1]) * (s[t] - s[t + 1]) > 0
                      and (abs(s[t] - s[t - 1]) >= thr or abs(s[t] - s[t + 1]) >= thr))
            out[i, :, ch] = [np.mean(np.abs(s)), rms, np.sum(np.abs(np.diff(s))), zc, ssc]
    return out.reshape(n, 5 * c)


@pytest.mark.parametrize("threshold", [0.0, 0.01, 0.5])
def test_td_features_equal_direct_loop(threshold):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 50, 3)) * np.array([1.0, 1e-3, 30.0])).astype(np.float32)
    x[0, :, 1] = 0.0  # silent channel
    x[1, 10:20, 0] = 0.5  # flat stretch
    got = td_features(x, threshold=threshold)
    assert got.shape == (7, 15)
    np.testing.assert_allclose(got, _td_loop(x, threshold), rtol=1e-12, atol=1e-12)


def test_td_features_known_values():
    x = np.array([1.0, -1.0, 1.0, -1.0, 1.0], dtype=np.float32)[None, :, None]
    mav, rms, wl, zc, ssc = td_features(x)[0]
    assert (mav, rms, wl, zc, ssc) == (1.0, 1.0, 8.0, 4.0, 3.0)
    # a large threshold removes the crossings and slope changes
    assert td_features(x, threshold=2.5)[0, 3:].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- LDA and metrics


def _two_class_closed_form(X, y, Xt):
    m0, m1 = X[y == 0].mean(0), X[y == 1].mean(0)
    c = np.concatenate([X[y == 0] - m0, X[y == 1] - m1])
    s = c.T @ c / (len(X) - 2)
    w = np.linalg.inv(s) @ (m1 - m0)
    p1 = np.mean(y == 1)
    b = -0.5 * w @ (m0 + m1) + np.log(p1 / (1 - p1))
    return (Xt @ w + b > 0).astype(int)


def test_lda_two_gaussians_matches_closed_form():
    rng = np.random.default_rng(1)
    cov = np.array([[2.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]])
    chol = np.linalg.cholesky(cov)
    mu = np.array([[0.0, 0.0, 0.0], [1.5, -1.0, 1.0]])

    def sample(n0, n1):
        y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
        return mu[y] + rng.standard_normal((n0 + n1, 3)) @ chol.T, y

    X, y = sample(300, 200)
    Xt, yt = sample(1000, 1000)
    pred = LDA().fit(X, y).predict(Xt)
    assert balanced_accuracy(yt, pred) > 0.9
    assert np.array_equal(pred, _two_class_closed_form(X, y, Xt))


def test_lda_multiclass_string_labels_and_singular_features():
    rng = np.random.default_rng(2)
    y = np.repeat(np.array(["fist", "open", "rest"]), 100)
    centers = {"fist": [3, 0], "open": [0, 3], "rest": [0, 0]}
    X = np.array([centers[c] for c in y]) + 0.5 * rng.standard_normal((300, 2))
    X = np.c_[X, np.ones(300)]  # constant feature: singular covariance
    model = LDA().fit(X, y)
    assert np.mean(model.predict(X) == y) > 0.95
    assert np.mean(LDA(ridge=1e-3).fit(X, y).predict(X) == y) > 0.95


def test_balanced_accuracy_and_macro_f1_hand_made():
    y_true = np.array([0] * 8 + [1] * 2)
    y_pred = np.zeros(10, int)  # always the majority class
    assert np.mean(y_true == y_pred) == 0.8
    assert balanced_accuracy(y_true, y_pred) == 0.5
    # class 0: P = 8/10, R = 1 -> F1 = 16/18; class 1: F1 = 0
    assert macro_f1(y_true, y_pred) == pytest.approx((16 / 18) / 2)
    y_pred2 = np.array([0] * 6 + [1] * 2 + [1, 0])
    # recall: class 0 6/8, class 1 1/2
    assert balanced_accuracy(y_true, y_pred2) == pytest.approx((6 / 8 + 1 / 2) / 2)
    # class 0: tp 6, P 6/7, R 6/8 -> F1 = 12/15; class 1: tp 1, P 1/3, R 1/2 -> F1 = 2/5
    assert macro_f1(y_true, y_pred2) == pytest.approx((12 / 15 + 2 / 5) / 2)
    assert balanced_accuracy([2, 2, 5], [2, 2, 5]) == 1.0 and macro_f1([2, 2, 5], [2, 2, 5]) == 1.0
    # a class only predicted (never true) lowers macro F1 but not balanced accuracy
    assert balanced_accuracy([0, 0], [0, 3]) == 0.5 and macro_f1([0, 0], [0, 3]) == pytest.approx((2 / 3) / 2)


def test_layer_decay_gives_each_depth_its_own_rate():
    import torch

    from aemg_dist.evaluation.classifiers import AEMGClassifier, FinetuneConfig, train_classifier
    from aemg_dist.model import AEMGModel, ModelConfig

    model = AEMGClassifier(AEMGModel(ModelConfig(d_model=16, n_layers=3, n_heads=2, tokenizer_hidden=8,
                                                 codebook_dim=4)), n_classes=2)
    groups = model.layer_groups()
    assert len(groups) == 3 + 2  # head + final norm, three blocks, embeddings
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g} >= trainable  # every trained parameter has a depth
    captured = {}
    original = torch.optim.AdamW.__init__

    def capture(self, params, **kwargs):
        captured["lrs"] = [g["lr"] for g in params]
        original(self, params, **kwargs)

    torch.optim.AdamW.__init__ = capture
    try:
        train_classifier(model, lambda idx: None, np.zeros(4, int), np.arange(4), np.zeros(0, int), 0, 1e-3, FinetuneConfig(),
                         seed=0, layer_decay=0.5)  # zero steps: the optimizer is made, inputs never read
    finally:
        torch.optim.AdamW.__init__ = original
    assert captured["lrs"] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4, 6.25e-5])


def test_the_demo_evaluation_options_resolve_to_a_strict_loso_config(tmp_path):
    """`aemg demo`'s step 4 builds `aemg evaluate` options from the demo's own arguments (which lack evaluate's
    --normalization/--splits/--role): they must resolve to the strict protocol's config."""
    from aemg_dist.cli import DEMO_HELD_OUT, _demo_evaluation_args, _evaluate_config, build_parser

    args = build_parser().parse_args(["demo", "--out", str(tmp_path)])
    cfg = _evaluate_config(_demo_evaluation_args(args, tmp_path / "pretrain", tmp_path / "corpus.zarr",
                                                 tmp_path / "results"), ["aemg_finetune", "td_lda"])
    assert cfg.protocol == "loso" and cfg.normalization == "strict" and cfg.budgets == [0.0, 10.0, 100.0]
    assert cfg.subjects == list(DEMO_HELD_OUT) and cfg.checkpoints == [str(tmp_path / "pretrain")]


def test_check_split_holds_back_the_last_windows_of_each_label_without_overlap():
    from aemg_dist.evaluation.classifiers import check_split

    # label 0: 6 windows of 100 samples every 50 in recording a; label 1: one window; label 2: two overlapping windows;
    # label 3: 2 + 2 windows in recordings a and b, apart
    label = np.array([0] * 6 + [1] + [2, 2] + [3] * 4)
    key = np.array(["a"] * 6 + ["a"] + ["b", "b"] + ["a", "a", "b", "b"])
    start = np.array([0, 50, 100, 150, 200, 250, 900, 0, 50, 2000, 2200, 0, 400])
    stop = start + 100
    fit, check = check_split(label, key, start, stop, share=0.3)
    assert set(check) == {4, 5, 12}  # the last round(0.3 x n) (at least one) in (recording, time) order
    assert set(fit) == {0, 1, 2, 6, 7, 8, 9, 10, 11}  # window 3 overlaps window 4; labels 1 and 2 keep everything
    assert not set(fit) & set(check) and set(label[fit]) == {0, 1, 2, 3}
    for f in fit:  # no fit window shares a sample with a check window of its recording
        assert not any(key[f] == key[c] and start[f] < stop[c] and stop[f] > start[c] for c in check)


def test_adaptation_steps_scale_with_the_calibration_size():
    from aemg_dist.evaluation.classifiers import FinetuneConfig, adaptation_steps

    assert adaptation_steps(11, FinetuneConfig(adapt_steps=100)) == 100  # adapt_epochs 0: one count for all
    cfg = FinetuneConfig(adapt_steps=100, adapt_epochs=10, adapt_min_steps=15, batch_size=64, calib_share=0.5)
    assert [adaptation_steps(n, cfg) for n in (11, 64, 160, 3000)] == [15, 20, 50, 100]  # 10 x n / 32, clipped


def _two_separable_classes():
    """Labels and an inputs function (row indices -> (n, 2) tensor) of 40 points in two well separated classes."""
    import torch

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    X = (rng.normal(size=(40, 2)) + 3 * (2 * y[:, None] - 1)).astype(np.float32)
    return y, lambda idx: torch.from_numpy(X[idx])


def test_early_stopping_keeps_the_step_count_the_check_windows_like_best():
    """A linear model on two separable classes: check windows labelled like the fit windows are scored best after
    the last step; check windows with the opposite labels before the first."""
    import torch

    from aemg_dist.evaluation.classifiers import FinetuneConfig, early_stopped_steps

    y, inputs = _two_separable_classes()
    cfg = FinetuneConfig(batch_size=16, calib_share=1.0, adapt_check_every=5, warmup_fraction=0.0)
    fit, check = np.arange(0, 40, 2), np.arange(1, 40, 2)
    args = dict(inputs=inputs, source=fit, fit=fit, check=check, steps=30, lr=0.05, cfg=cfg, seed=0)
    torch.manual_seed(0)
    assert early_stopped_steps(torch.nn.Linear(2, 2), y=y, **args) == 30
    flipped = y.copy()
    flipped[check] = 1 - y[check]
    torch.manual_seed(0)
    assert early_stopped_steps(torch.nn.Linear(2, 2), y=flipped, **args) == 0


def test_check_score_by_loss_and_by_accuracy_disagree_where_they_should():
    """Logits A: every window right by a small margin; logits B: one window wrong, the others right by a wide margin.
    B has the lower balanced loss, A the higher balanced accuracy."""
    import torch

    from aemg_dist.evaluation.classifiers import check_score

    y = np.array([0, 0, 0, 1, 1, 1])
    a = np.array([[0.1, 0]] * 3 + [[0, 0.1]] * 3, dtype=np.float32)
    b = np.array([[5, 0], [5, 0], [0, 0.1]] + [[0, 5]] * 3, dtype=np.float32)
    scores = {name: {by: check_score(torch.nn.Identity(), lambda idx, L=logits: torch.from_numpy(L[idx]), y,
                                     np.arange(6), by) for by in ("loss", "accuracy")} for name, logits in
              (("a", a), ("b", b))}
    assert scores["b"]["loss"] < scores["a"]["loss"]
    assert scores["a"]["accuracy"] < scores["b"]["accuracy"]
    assert scores["a"]["accuracy"][0] == -1.0 and scores["b"]["accuracy"][0] == pytest.approx(-5 / 6)


def test_augmentation_reaches_every_training_batch_and_never_the_scoring():
    """A linear model on two separable classes, trained on views that flip the sign of the input: it learns the
    flipped mapping (so the change reached training), and early stopping, which scores the check windows unchanged,
    prefers not to adapt at all."""
    import torch

    from aemg_dist.evaluation.classifiers import FinetuneConfig, early_stopped_steps, predict, train_classifier

    y, inputs = _two_separable_classes()
    seen = []

    def flip(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.shape[0])
        return -batch

    cfg = FinetuneConfig(batch_size=16, calib_share=1.0, adapt_check_every=5, warmup_fraction=0.0)
    everything = np.arange(40)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    train_classifier(model, inputs, y, everything, np.zeros(0, int), 30, 0.05, cfg, seed=0, augment=flip)
    assert seen == [16] * 30
    assert np.array_equal(predict(model, inputs, everything), 1 - y)
    fit, check = np.arange(0, 40, 2), np.arange(1, 40, 2)
    torch.manual_seed(0)
    assert early_stopped_steps(torch.nn.Linear(2, 2), inputs=inputs, y=y, source=fit, fit=fit, check=check, steps=30,
                               lr=0.05, cfg=cfg, seed=0, augment=flip) == 0
    torch.manual_seed(0)  # the same without the flip adapts to the end: the flip alone made the difference
    assert early_stopped_steps(torch.nn.Linear(2, 2), inputs=inputs, y=y, source=fit, fit=fit, check=check, steps=30,
                               lr=0.05, cfg=cfg, seed=0) == 30


def test_aemg_arms_augment_only_when_asked_and_with_the_models_view_settings():
    from types import SimpleNamespace

    import torch

    from aemg_dist.evaluation.classifiers import FinetuneConfig
    from aemg_dist.evaluation.methods import CNN, AEMGFinetune, AEMGScratch
    from aemg_dist.model import ModelConfig

    model_config = ModelConfig(augment_rotation=0.0, augment_drop=0.0, augment_noise=0.0, augment_gain_std=0.5,
                               gain_features=[16])
    off = SimpleNamespace(train=FinetuneConfig(), model_config=model_config)
    on = SimpleNamespace(train=FinetuneConfig(augment=True), model_config=model_config)
    assert AEMGFinetune().augmentation(off) is None and CNN().augmentation(on) is None
    n_features = model_config.n_features
    batch = {"features": torch.zeros(3, 4, n_features), "mask": torch.ones(3, 4, dtype=torch.bool),
             "channel": torch.tensor([[0, 1, 2, 3]] * 3), "coords": torch.rand(3, 4, 3)}
    for method in (AEMGFinetune(), AEMGScratch()):
        torch.manual_seed(0)
        view = method.augmentation(on)(batch)
        changed = (view["features"] != 0).any(dim=(0, 1))
        # only the gain feature the model names moves (no noise, rotation or drop asked), and the input stays
        assert changed.tolist() == [i == 16 for i in range(n_features)]
        assert torch.equal(view["coords"], batch["coords"]) and not batch["features"].any()
