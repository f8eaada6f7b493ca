"""Classifier post-processing shared by the text and image runtimes: probabilities and ranked labels.

Rows are converted to Python lists once per batch: indexing numpy scalars item by item
costs more than the model call for small batches of small models.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def thresholds_array(thresholds: list[float] | None, n_labels: int) -> np.ndarray:
    """One threshold per label from a global value or a per-label list (default 0.5)."""
    if not thresholds:
        return np.full(n_labels, 0.5)
    if len(thresholds) == 1:
        return np.full(n_labels, float(thresholds[0]))
    if len(thresholds) != n_labels:
        raise ValueError(f"{len(thresholds)} thresholds for {n_labels} labels")
    return np.asarray(thresholds, dtype=float)


def ranked(probs: np.ndarray, labels: list[str], k: int | None = None) -> list[list[dict]]:
    """Per row of ``probs`` (batch x labels), the ``k`` best labels as [{"label", "score"}], best first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    # each row's scores picked from its list (np.take_along_axis: ~4 of the ~7.5 us a one-row batch took)
    return [[{"label": labels[i], "score": row[i]} for i in idx] for idx, row in zip(order.tolist(), probs.tolist())]


def top_k(scores: np.ndarray, labels: list[str], k: int) -> list[dict]:
    """The k best labels of one row as [{"label", "score"}], best first."""
    return ranked(scores[None, :], labels, k)[0]


def above_threshold(scores: np.ndarray, labels: list[str], thresholds: np.ndarray) -> list[dict]:
    """Every label whose score reaches its threshold, best first."""
    order = np.argsort(-scores, kind="stable")
    kept = order[scores[order] >= thresholds[order]]
    return [{"label": labels[i], "score": s} for i, s in zip(kept.tolist(), scores[kept].tolist())]
