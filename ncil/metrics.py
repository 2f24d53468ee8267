"""Class-incremental metrics exactly as the paper defines them (metrics.md; method-spec 6.2).

Tasks are indexed 0..T-1 here (the paper counts 1..T). ``acc[k, i]`` is the accuracy (percent) on
task i's test images after training task k, NaN above the diagonal.

* ``Acc_k`` pools all test images seen after task k: the sample-weighted mean of ``acc[k, :k+1]``.
* Avg = mean over k of Acc_k (base task included); Last = Acc_{T-1}.
* Forgetting f[k, i] = max_{t=i..k-1} (acc[t, i] - acc[k, i]) (earlier steps only, can be negative);
  F_k = unweighted mean over i < k of f[k, i]; tables report F_{T-1}.
"""

from __future__ import annotations

import numpy as np

CONVENTION = "paper"  # sample-weighted Acc_k, base task in Avg, max over earlier steps, unweighted F


def accuracy_matrix(evaluations: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """From per-task prediction tables (task k's table: ``label``, ``label_task``, ``prediction``
    columns over all test images seen after task k) to (acc (T, T) in percent, test_counts (T,))."""
    n = len(evaluations)
    acc = np.full((n, n), np.nan)
    counts = np.zeros(n, dtype=np.int64)
    for k, ev in enumerate(evaluations):
        label_task = np.asarray(ev["label_task"])
        correct = np.asarray(ev["prediction"]) == np.asarray(ev["label"])
        for i in range(k + 1):
            rows = label_task == i
            if not rows.any():
                raise ValueError(f"evaluation after task {k} has no test image of task {i}")
            acc[k, i] = 100.0 * correct[rows].mean()
            if k == n - 1:
                counts[i] = int(rows.sum())
    return acc, counts


def accuracy_per_step(acc: np.ndarray, test_counts: np.ndarray) -> np.ndarray:
    """Acc_k: sample-weighted accuracy over all test images seen after task k, shape (T,)."""
    acc, w = np.asarray(acc, float), np.asarray(test_counts, float)
    return np.array([np.dot(acc[k, : k + 1], w[: k + 1]) / w[: k + 1].sum() for k in range(len(acc))])


def forgetting(acc: np.ndarray, k: int | None = None) -> np.ndarray:
    """f[k, i] for i < k (paper definition, max over earlier steps t = i..k-1), shape (k,)."""
    acc = np.asarray(acc, float)
    k = len(acc) - 1 if k is None else k
    return np.array([np.max(acc[i:k, i]) - acc[k, i] for i in range(k)])


def average_forgetting(acc: np.ndarray, k: int | None = None) -> float:
    """F_k = unweighted mean of f[k, i] over i < k; NaN for a single task."""
    f = forgetting(acc, k)
    return float(f.mean()) if len(f) else float("nan")


def summarize(acc_matrix, test_counts) -> dict:
    """Avg, Last and average forgetting (percent) from a T x T accuracy matrix and test counts."""
    acc = np.asarray(acc_matrix, float)
    counts = np.asarray(test_counts, float)
    if acc.ndim != 2 or acc.shape[0] != acc.shape[1] or counts.shape != (acc.shape[0],):
        raise ValueError(f"expected a T x T matrix and T counts, got {acc.shape} and {counts.shape}")
    steps = accuracy_per_step(acc, counts)
    return {
        "avg_accuracy": float(steps.mean()),
        "last_accuracy": float(steps[-1]),
        "avg_forgetting": average_forgetting(acc),
        "accuracy_per_step": [float(a) for a in steps],
    }
