"""The classic baseline: time-domain features + linear discriminant analysis, and the metrics.

`td_features` (Hudgins et al. 1993), per channel of each raw EMG window x (T samples):

- MAV = mean |x|,  RMS = sqrt(mean x^2),  WL = sum |x[t+1] - x[t]|;
- ZC  = number of t with x[t] * x[t+1] < 0 and |x[t] - x[t+1]| >= thr;
- SSC = number of t in 1..T-2 with (x[t]-x[t-1]) * (x[t]-x[t+1]) > 0 and
  (|x[t]-x[t-1]| >= thr or |x[t]-x[t+1]| >= thr);

where thr = `threshold` * RMS of that channel in that window (default 0.01), so the noise
threshold follows the channel's scale whatever the units. Output (N, 5*C) float64, feature-major:
[MAV ch0..C-1, RMS ..., WL ..., ZC ..., SSC ...].

`LDA`: class means, pooled within-class covariance S (divisor N - K), optional ridge
(S + ridge * mean(diag S) * I), discriminants x' S^-1 mu_k - mu_k' S^-1 mu_k / 2 + log prior_k
(empirical priors by default). A singular S (ridge 0, constant features) falls back to the
pseudo-inverse. With `sample_weight` w (calibration windows weighted up against the other
subjects' windows), means and priors are weighted and S = sum_i w_i (x_i - mu_yi)(x_i - mu_yi)' /
(sum w * (N - K) / N), which is the unweighted estimate when every w_i = 1.
"""

from __future__ import annotations

import numpy as np

TD_FEATURES = ("mav", "rms", "wl", "zc", "ssc")


def td_features(windows: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """(N, T, C) raw EMG windows -> (N, 5*C) MAV, RMS, WL, ZC, SSC features (module docstring)."""
    x = np.asarray(windows, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"windows must be (N, T, C), got shape {x.shape}")
    mav = np.abs(x).mean(axis=1)
    rms = np.sqrt((x ** 2).mean(axis=1))
    thr = (threshold * rms)[:, None, :]
    d = np.diff(x, axis=1)  # d[t] = x[t+1] - x[t]
    wl = np.abs(d).sum(axis=1)
    zc = ((x[:, :-1] * x[:, 1:] < 0) & (np.abs(d) >= thr)).sum(axis=1)
    back, fwd = d[:, :-1], -d[:, 1:]  # x[t]-x[t-1], x[t]-x[t+1] for t in 1..T-2
    ssc = ((back * fwd > 0) & ((np.abs(back) >= thr) | (np.abs(fwd) >= thr))).sum(axis=1)
    return np.concatenate([mav, rms, wl, zc, ssc], axis=1)


class LDA:
    """Linear discriminant analysis with a pooled covariance (numpy only)."""

    def __init__(self, ridge: float = 0.0, priors: str = "empirical"):
        if ridge < 0:
            raise ValueError("ridge must be >= 0")
        if priors not in ("empirical", "uniform"):
            raise ValueError("priors must be 'empirical' or 'uniform'")
        self.ridge, self.priors = ridge, priors

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "LDA":
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        self.classes_, inverse = np.unique(y, return_inverse=True)
        k, n = self.classes_.size, X.shape[0]
        if k < 2 or n <= k:
            raise ValueError("LDA needs at least two classes and more samples than classes")
        w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (n,) or np.any(w <= 0) or not np.all(np.isfinite(w)):
            raise ValueError("sample_weight must be (N,) positive finite weights")
        counts = np.bincount(inverse, weights=w, minlength=k)
        means = np.stack([np.bincount(inverse, weights=w * X[:, j], minlength=k) for j in range(X.shape[1])], axis=1)
        means /= counts[:, None]
        centered = X - means[inverse]
        cov = (centered * w[:, None]).T @ centered / (w.sum() * (n - k) / n)
        if self.ridge > 0:
            cov = cov + self.ridge * np.mean(np.diag(cov)) * np.eye(cov.shape[0])
        try:
            solved = np.linalg.solve(cov, means.T)  # S^-1 mu_k, (D, K)
            if not np.all(np.isfinite(solved)):
                raise np.linalg.LinAlgError
        except np.linalg.LinAlgError:
            solved = np.linalg.pinv(cov) @ means.T
        prior = counts / counts.sum() if self.priors == "empirical" else np.full(k, 1.0 / k)
        self.coef_ = solved.T  # (K, D)
        self.intercept_ = -0.5 * np.einsum("kd,kd->k", means, self.coef_) + np.log(prior)
        self.means_ = means
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in y_true of their recall."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        raise ValueError("empty y_true")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean F1 over the classes in y_true or y_pred (a class never predicted correctly scores 0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        raise ValueError("empty y_true")
    scores = []
    for c in np.union1d(y_true, y_pred):
        tp = np.sum((y_true == c) & (y_pred == c))
        denom = np.sum(y_true == c) + np.sum(y_pred == c)
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))
