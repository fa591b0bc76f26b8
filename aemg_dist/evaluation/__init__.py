"""Evaluation core: subject-held-out folds, calibration budgets, the TD+LDA baseline and metrics.

Plain numpy; no Ray, no torch. `folds` splits a table of labeled windows (token rows or any
table with dataset/subject/session/label/rep/key/start columns); `td_lda` holds the classic
time-domain features, a pooled-covariance LDA and the balanced-accuracy / macro-F1 metrics.
"""

from aemg_dist.evaluation.folds import Fold, calibration_split, loso_folds
from aemg_dist.evaluation.td_lda import LDA, balanced_accuracy, macro_f1, td_features

__all__ = ["Fold", "LDA", "balanced_accuracy", "calibration_split", "loso_folds", "macro_f1", "td_features"]
