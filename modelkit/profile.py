"""Reference profiles for drift monitoring: binned histograms and drift statistics.

Training computes a :class:`~modelkit.manifest.Histogram` per watched feature on
held-out data; the service counts live values into the same bins (``bin_index``);
Prometheus recording rules compare the two. ``psi``/``js_divergence`` here are the
offline equivalents used by tests and replay scripts. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon

from .manifest import Histogram, ReferenceProfile

EPS = 1e-4  # floor for empty bins so PSI stays finite


def numeric_histogram(values: Sequence[float], bins: int = 10, *, edges: Sequence[float] | None = None) -> Histogram:
    """Quantile-binned histogram (unique edges) of held-out values.

    The outer bins are open-ended when live values are counted, so out-of-range
    values land in the first or last bin instead of being dropped.
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("cannot profile an empty feature")
    if edges is None:
        u, repeats = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)), return_counts=True)
        # A value holding several quantiles (e.g. an unknown-token rate that is mostly 0) gets a bin
        # of its own, so live values just above it show as drift instead of merging into its bin.
        d = np.maximum(1e-9, 1e-6 * np.abs(u))
        e = np.unique(np.concatenate([u, u[repeats > 1] + d[repeats > 1]]))
        if e.size < 3:  # constant on held-out data: its value's bin and one open bin on each side
            e = np.array([u[0] - 0.5, u[0], u[0] + d[0], u[0] + 0.5])
    else:
        e = np.asarray(edges, dtype=float)
    counts = np.bincount(bin_indices(v, e), minlength=e.size - 1)
    return Histogram(kind="numeric", edges=e.tolist(), fractions=(counts / counts.sum()).tolist())


def categorical_histogram(values: Sequence[str], categories: Sequence[str]) -> Histogram:
    """Fractions of each category (values outside ``categories`` are an error)."""
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros(len(categories))
    for value in values:
        counts[index[value]] += 1
    if counts.sum() == 0:
        raise ValueError("cannot profile an empty feature")
    return Histogram(kind="categorical", categories=list(categories), fractions=(counts / counts.sum()).tolist())


def bin_indices(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin index of each value; outer bins open-ended."""
    inner = np.asarray(edges, dtype=float)[1:-1]
    return np.searchsorted(inner, np.asarray(values, dtype=float), side="right")


def bin_index(value: float, hist: Histogram) -> int:
    """Bin of one live value (numeric) or category position (categorical; -1 if unknown)."""
    if hist.kind == "numeric":
        return int(bin_indices(np.asarray([value]), hist.edges)[0])
    try:
        return hist.categories.index(str(value))
    except ValueError:
        return -1


def live_fractions(values: Sequence, hist: Histogram) -> np.ndarray:
    """Fractions of live values in the reference histogram's bins."""
    if hist.kind == "numeric":
        idx = bin_indices(np.asarray(values, dtype=float), hist.edges)
    else:
        idx = np.asarray([bin_index(v, hist) for v in values])
        idx = idx[idx >= 0]
    counts = np.bincount(idx, minlength=len(hist.fractions)).astype(float)
    return counts / max(counts.sum(), 1.0)


def psi(reference: Sequence[float], live: Sequence[float]) -> float:
    """Population stability index: sum((live - ref) * ln(live / ref)), bins floored at EPS."""
    r = np.maximum(np.asarray(reference, dtype=float), EPS)
    q = np.maximum(np.asarray(live, dtype=float), EPS)
    return float(np.sum((q - r) * np.log(q / r)))


def js_divergence(reference: Sequence[float], live: Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) via scipy."""
    return float(jensenshannon(np.asarray(reference, float), np.asarray(live, float), base=2) ** 2)


def profile_features(features: Sequence[dict], labels: Sequence[str], split: str) -> ReferenceProfile:
    """Reference profile of a runtime's per-item ``features``: strings categorical, numbers numeric.

    Categorical features use ``labels`` as categories when every value is one of them (so
    classes never seen in the data still get a bin), else the values seen.
    """
    if not features:
        raise ValueError("no features to profile")
    hists = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if isinstance(values[0], str):
            cats = list(labels) if set(values) <= set(labels) else sorted(set(values))
            hists[key] = categorical_histogram(values, cats)
        else:
            hists[key] = numeric_histogram([float(v) for v in values])
    return ReferenceProfile(split=split, n_samples=len(features), features=hists)
