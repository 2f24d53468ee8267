"""Class-incremental metrics exactly as the paper defines them (metrics.md; method-spec 6.2).

Tasks are indexed 0..T-1 here (the paper counts 1..T). ``acc[k, i]`` is the accuracy (percent) on
task i's test images after training task k, NaN above the diagonal.

The project default (``CONVENTION = "paper"``):

* ``Acc_k`` pools all test images seen after task k: the sample-weighted mean of ``acc[k, :k+1]``.
* Avg = mean over k of Acc_k (base task included); Last = Acc_{T-1}.
* Forgetting f[k, i] = max_{t=i..k-1} (acc[t, i] - acc[k, i]) (earlier steps only, can be negative);
  F_k = unweighted mean over i < k of f[k, i]; tables report F_{T-1}.

Named variants other systems report (metrics.md, "Variants"), never used by default:

* ``clipped_forgetting``: the max also runs over the final step, so f >= 0 (Mammoth, LAMDA-PILOT).
* ``first_minus_last_forgetting``: acc[i, i] - acc[T-1, i] (Avalanche); ``backward_transfer`` is its negative.
* ``class_weighted_forgetting``: f[k, i] weighted by the classes of task i.
* ``task_averaged_accuracy``: the unweighted mean of acc[k, :k+1] (FACIL ``avg_accs``, Mammoth).

Every function is pure: arrays in, numbers out.
"""

from __future__ import annotations

import numpy as np

CONVENTION = "paper"  # sample-weighted Acc_k, base task in Avg, max over earlier steps, unweighted F
CONVENTION_TEXT = (
    "sample-weighted Acc_k, base task included in Avg, forgetting with the max over earlier steps, "
    "unweighted mean over tasks"
)
VARIANTS = ("clipped_forgetting", "first_minus_last_forgetting", "backward_transfer",
            "class_weighted_forgetting", "task_averaged_accuracy")


def check_matrix(acc, test_counts=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate a T x T accuracy matrix (finite on and below the diagonal) and, if given, T counts > 0."""
    acc = np.asarray(acc, float)
    if acc.ndim != 2 or acc.shape[0] != acc.shape[1] or acc.shape[0] == 0:
        raise ValueError(f"acc_matrix: expected a non-empty T x T matrix, got shape {acc.shape}")
    lower = np.tril(np.ones(acc.shape, bool))
    if not np.isfinite(acc[lower]).all():
        k, i = np.argwhere(lower & ~np.isfinite(acc))[0]
        raise ValueError(f"acc_matrix[{k}][{i}]: expected a finite accuracy on or below the diagonal, got {acc[k, i]}")
    if test_counts is None:
        return acc, None
    counts = np.asarray(test_counts, float)
    if counts.shape != (acc.shape[0],):
        raise ValueError(f"test_counts: expected {acc.shape[0]} counts (one per task), got shape {counts.shape}")
    if not (counts > 0).all():
        raise ValueError(f"test_counts: every task needs at least one test image, got {counts.tolist()}")
    return acc, counts


def accuracy_matrix(evaluations: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """a[k, i] (metrics.md notation) from per-task prediction tables.

    Task k's table has ``label``, ``label_task`` and ``prediction`` columns over all test images
    seen after task k. Returns (acc (T, T) in percent, NaN above the diagonal; test_counts (T,)
    taken from the last evaluation, which holds every task's test images).
    """
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
    """Acc_k, shape (T,): the sample-weighted mean of a[k, 1..k] (metrics.md: Acc_k pools all seen
    test images; method-spec 6.3: Acc_2 = (5000*70 + 1000*80)/6000 = 71.67)."""
    acc, w = np.asarray(acc, float), np.asarray(test_counts, float)
    return np.array([np.dot(acc[k, : k + 1], w[: k + 1]) / w[: k + 1].sum() for k in range(len(acc))])


def average_accuracy(steps) -> float:
    """Avg = (1/T) sum_k Acc_k, base task included (metrics.md)."""
    return float(np.mean(np.asarray(steps, float)))


def last_accuracy(steps) -> float:
    """Last = Acc_T (metrics.md)."""
    return float(np.asarray(steps, float)[-1])


def forgetting(acc: np.ndarray, k: int | None = None) -> np.ndarray:
    """f[k, i] = max_{t=i..k-1} (a[t, i] - a[k, i]) for i < k, shape (k,) (metrics.md; method-spec 6.2).

    The max runs over earlier steps only, so f is negative when a task's accuracy rose (backward transfer).
    """
    acc = np.asarray(acc, float)
    k = len(acc) - 1 if k is None else k
    return np.array([np.max(acc[i:k, i]) - acc[k, i] for i in range(k)])


def average_forgetting(acc: np.ndarray, k: int | None = None) -> float:
    """F_k = (1/(k-1)) sum_{i<k} f[k, i], unweighted over tasks (metrics.md); NaN for a single task."""
    f = forgetting(acc, k)
    return float(f.mean()) if len(f) else float("nan")


def forgetting_per_step(acc: np.ndarray) -> np.ndarray:
    """F_k for every k, shape (T,); F of the base step is NaN (nothing to forget yet)."""
    return np.array([average_forgetting(acc, k) for k in range(len(acc))])


# --- Named variants (never the default) ----------------------------------------------------------


def clipped_forgetting(acc: np.ndarray, k: int | None = None) -> float:
    """Variant: max_{t=i..k} (a[t, i] - a[k, i]), so every f >= 0; unweighted mean over i < k
    (Mammoth, LAMDA-PILOT; metrics.md example: 10.0 where the paper's convention gives 9.0)."""
    acc = np.asarray(acc, float)
    k = len(acc) - 1 if k is None else k
    f = np.array([np.max(acc[i: k + 1, i]) - acc[k, i] for i in range(k)])
    return float(f.mean()) if len(f) else float("nan")


def first_minus_last_forgetting(acc: np.ndarray, k: int | None = None) -> float:
    """Variant: mean over i < k of a[i, i] - a[k, i] (Avalanche's forgetting; metrics.md example: 6.5)."""
    acc = np.asarray(acc, float)
    k = len(acc) - 1 if k is None else k
    f = np.array([acc[i, i] - acc[k, i] for i in range(k)])
    return float(f.mean()) if len(f) else float("nan")


def backward_transfer(acc: np.ndarray, k: int | None = None) -> float:
    """Variant: BWT = mean over i < k of a[k, i] - a[i, i], the negative of first-minus-last forgetting."""
    return -first_minus_last_forgetting(acc, k)


def class_weighted_forgetting(acc: np.ndarray, classes_per_task, k: int | None = None) -> float:
    """Variant: the paper's f[k, i] averaged with task i's class count as weight
    (metrics.md example: (50*20 + 10*(-2))/60 = 16.3)."""
    f = forgetting(acc, k)
    w = np.asarray(classes_per_task, float)[: len(f)]
    return float(np.dot(f, w) / w.sum()) if len(f) else float("nan")


def task_averaged_accuracy(acc: np.ndarray) -> np.ndarray:
    """Variant: the unweighted mean of a[k, 1..k] per step, shape (T,) (FACIL ``avg_accs``, Mammoth;
    metrics.md example: 80.0 where sample-weighted Acc gives 73.3)."""
    acc = np.asarray(acc, float)
    return np.array([acc[k, : k + 1].mean() for k in range(len(acc))])


def variants(acc_matrix, test_counts, classes_per_task=None) -> dict:
    """Every named variant's final-step value (for diagnostics; none of them is the paper's metric)."""
    acc, _ = check_matrix(acc_matrix, test_counts)
    out = {
        "clipped_forgetting": clipped_forgetting(acc),
        "first_minus_last_forgetting": first_minus_last_forgetting(acc),
        "backward_transfer": backward_transfer(acc),
        "task_averaged_avg_accuracy": average_accuracy(task_averaged_accuracy(acc)),
        "task_averaged_last_accuracy": last_accuracy(task_averaged_accuracy(acc)),
    }
    if classes_per_task is not None:
        out["class_weighted_forgetting"] = class_weighted_forgetting(acc, classes_per_task)
    return out


def summarize(acc_matrix, test_counts) -> dict:
    """Avg, Last and average forgetting F_T (percent) of a run, in the paper's convention.

    ``acc_matrix`` is T x T with NaN above the diagonal, ``test_counts`` the number of test images
    of each task. Keys: ``avg_accuracy``, ``last_accuracy``, ``avg_forgetting`` (NaN if T = 1) and
    ``accuracy_per_step`` (the Acc_k curve of Figure 3).
    """
    acc, counts = check_matrix(acc_matrix, test_counts)
    steps = accuracy_per_step(acc, counts)
    return {
        "avg_accuracy": average_accuracy(steps),
        "last_accuracy": last_accuracy(steps),
        "avg_forgetting": average_forgetting(acc),
        "accuracy_per_step": [float(a) for a in steps],
    }
