"""Exemplar memory for the rehearsal methods of Table 4 (DyTox), as pure NumPy functions (docs/dytox.md,
section "Exemplar memory").

DyTox's released configuration selects exemplars with iCaRL's herding (``rehearsal: icarl_all``) on the
concatenation of all task embeddings [e_1, ..., e_t] of each training image, L2-normalised. Selection runs
after a task's training, per class, on that class's training images; the result is an ordered list (the
herding rank), so a memory that must shrink keeps each class's first m exemplars.

Two forms of herding:

* ``rule="icarl"`` (default; iCaRL's exemplar construction, Rebuffi et al. 2017, Algorithm 4): the k-th
  exemplar is the not yet chosen sample x minimising ||mu - (phi(x) + sum_{j<k} p_j) / k||^2, mu the class
  mean of the (normalised) features.
* ``rule="code"``: the released ``icarl_selection`` (Welling's herding): a vector w starts at mu; each step
  picks argmax_x w . phi(x), records it if new, and sets w <- w + mu - phi(x); at most 1000 steps, and a
  class whose steps end early is padded with its unchosen samples in index order.

Both are deterministic: features are compared in float64 and ties go to the lowest index.
"""

from __future__ import annotations

import numpy as np

RULES = ("icarl", "code")
CODE_MAX_STEPS = 1000  # the released selection's step limit
MEMORY_POLICIES = ("per_class", "budget")


def _as_features(features, normalize: bool) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features: expected (N, D), got shape {x.shape}")
    if normalize:  # the released selection's normalisation: x / (||x||_2 + 1e-8)
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)
    return x


def herding_order(features, m: int, *, normalize: bool = True, rule: str = "icarl") -> np.ndarray:
    """Indices (int64) of the first min(m, N) samples of one class in herding order; features (N, D)."""
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {RULES}, got {rule!r}")
    if m < 0:
        raise ValueError(f"m: expected >= 0 exemplars, got {m}")
    x = _as_features(features, normalize)
    n = x.shape[0]
    m = min(m, n)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    mu = x.mean(axis=0)  # (D,)
    if rule == "code":
        return _herding_code(x, mu, m)
    chosen = np.zeros(n, dtype=bool)
    running = np.zeros_like(mu)  # sum of the chosen features
    order = []
    for k in range(1, m + 1):
        distances = ((mu - (running + x) / k) ** 2).sum(axis=1)  # (N,)
        distances[chosen] = np.inf
        best = int(np.argmin(distances))  # the first index of the minimum
        order.append(best)
        chosen[best] = True
        running = running + x[best]
    return np.asarray(order, dtype=np.int64)


def _herding_code(x: np.ndarray, mu: np.ndarray, m: int) -> np.ndarray:
    n = x.shape[0]
    rank = np.full(n, -1, dtype=np.int64)
    w = mu.copy()
    found = 0
    for _ in range(CODE_MAX_STEPS):
        if found == m:
            break
        best = int(np.argmax(x @ w))  # the first index of the maximum
        if rank[best] < 0:
            rank[best] = found
            found += 1
        w = w + mu - x[best]
    picked = list(np.argsort(np.where(rank < 0, n, rank), kind="stable")[:found])
    padding = [i for i in range(n) if rank[i] < 0][: m - found]
    return np.asarray(picked + padding, dtype=np.int64)


def select_exemplars(features, labels, m: int, *, normalize: bool = True, rule: str = "icarl") -> dict[str, np.ndarray]:
    """Herding per class over one task's training images.

    features (N, D), labels (N,): the rows of the task's training images (row i = image i of the caller's
    index space). Returns {"index": rows (int64), "label": their classes, "rank": herding rank within the
    class (0 = first chosen)}, classes in increasing order and each class's rows in herding order.
    """
    x = np.asarray(features)
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"labels: expected (N,) with N = {len(x)}, got shape {y.shape}")
    index, label, rank = [], [], []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)  # increasing: ties broken by the caller's index
        order = herding_order(x[rows], m, normalize=normalize, rule=rule)
        index.append(rows[order])
        label.append(np.full(len(order), c, dtype=y.dtype))
        rank.append(np.arange(len(order), dtype=np.int64))
    if not index:
        return {"index": np.zeros(0, np.int64), "label": np.zeros(0, y.dtype), "rank": np.zeros(0, np.int64)}
    return {"index": np.concatenate(index).astype(np.int64), "label": np.concatenate(label),
            "rank": np.concatenate(rank)}


def memory_per_class(n_seen_classes: int, *, policy: str = "per_class", per_class: int = 20,
                     budget: int = 2000) -> int:
    """Exemplars kept per class once ``n_seen_classes`` classes are seen.

    ``per_class``: a fixed ``per_class`` (20: the AAAI paper's "20 exemplars of each learned class").
    ``budget``: a total of ``budget`` images shared by the seen classes, budget // n_seen (the released
    default, ``fixed_memory`` off: 200 per class after 10 classes, 20 after 100).
    """
    if policy not in MEMORY_POLICIES:
        raise ValueError(f"policy: expected one of {MEMORY_POLICIES}, got {policy!r}")
    if n_seen_classes < 1:
        raise ValueError(f"n_seen_classes: expected >= 1, got {n_seen_classes}")
    return per_class if policy == "per_class" else budget // n_seen_classes


def reduce_memory(memory: dict[str, np.ndarray], m: int) -> dict[str, np.ndarray]:
    """Keep each class's first ``m`` exemplars in herding rank (the released ``Memory.reduce``); pure.

    ``memory``: columns of equal length, among them "label" and "rank" (as ``select_exemplars`` returns,
    possibly with more columns such as "task"); the kept rows keep their order.
    """
    if m < 0:
        raise ValueError(f"m: expected >= 0, got {m}")
    keep = np.asarray(memory["rank"]) < m
    return {name: np.asarray(column)[keep] for name, column in memory.items()}


def merge_memory(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The old memory's rows followed by the new task's (same columns); classes do not overlap across tasks."""
    if set(old) != set(new):
        raise ValueError(f"memories with different columns: {sorted(old)} and {sorted(new)}")
    overlap = np.intersect1d(np.asarray(old["label"]), np.asarray(new["label"]))
    if overlap.size:
        raise ValueError(f"classes in both memories: {overlap.tolist()}")
    return {name: np.concatenate([np.asarray(old[name]), np.asarray(new[name])]) for name in old}
