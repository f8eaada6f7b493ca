"""Test and validation metrics (scikit-learn) and decision-threshold tuning."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, hamming_loss


def single_label_metrics(y_true, y_pred) -> dict[str, float]:
    """Accuracy, macro-F1 and weighted-F1 of class ids."""
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
    }


def multi_label_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Micro/macro-F1, subset accuracy and hamming loss of 0/1 indicator matrices."""
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    return {
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
    }


THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)


def tune_global_threshold(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The grid threshold with the best micro-F1 on validation data."""
    scores = [f1_score(y_true, probs >= t, average="micro", zero_division=0) for t in THRESHOLD_GRID]
    return float(THRESHOLD_GRID[int(np.argmax(scores))])


def tune_per_label_thresholds(y_true: np.ndarray, probs: np.ndarray, min_positives: int = 5) -> list[float]:
    """Per-label best-F1 thresholds; labels with fewer than ``min_positives`` use the global one."""
    global_t = tune_global_threshold(y_true, probs)
    out = []
    for j in range(y_true.shape[1]):
        if y_true[:, j].sum() < min_positives:
            out.append(global_t)
            continue
        scores = [f1_score(y_true[:, j], probs[:, j] >= t, zero_division=0) for t in THRESHOLD_GRID]
        out.append(float(THRESHOLD_GRID[int(np.argmax(scores))]))
    return out
