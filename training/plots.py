"""PNG plots for the model card: training curves, confusion matrix, per-label F1."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def curves_plot(history: list[dict], monitor: str, out_dir: Path) -> Path:
    """Train loss (and val loss if logged) and the monitored validation metric per epoch."""
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    if all("val_loss" in h for h in history):
        ax1.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(epochs, [h[f"val_{monitor}"] for h in history], marker="o", color="tab:green")
    ax2.set(xlabel="epoch", ylabel=monitor, title=f"validation {monitor}")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix_plot(y_true, y_pred, labels: list[str], out_dir: Path) -> Path:
    """Row-normalized confusion matrix of the test split."""
    from sklearn.metrics import ConfusionMatrixDisplay

    out_dir.mkdir(parents=True, exist_ok=True)
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(len(labels))), display_labels=labels, normalize="true",
        values_format=".2f", ax=ax, colorbar=False, xticks_rotation=45,
    )
    ax.set_title("confusion matrix (test, row-normalized)")
    fig.tight_layout()
    path = out_dir / "confusion_matrix.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def per_label_f1_plot(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], out_dir: Path) -> Path:
    """Horizontal bars of each label's test F1, sorted, with its support."""
    from sklearn.metrics import f1_score

    out_dir.mkdir(parents=True, exist_ok=True)
    f1 = f1_score(y_true, y_pred, average=None, zero_division=0)
    support = np.asarray(y_true).sum(axis=0).astype(int)
    order = np.argsort(f1)
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.16 * len(labels) + 1)))
    ax.barh(range(len(labels)), f1[order], color="tab:blue")
    ax.set_yticks(range(len(labels)), [f"{labels[i]} ({support[i]})" for i in order], fontsize=6)
    ax.set(xlabel="F1 (test)", xlim=(0, 1), title="per-label F1 (support)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = out_dir / "per_label_f1.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
