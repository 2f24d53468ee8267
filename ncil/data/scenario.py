"""Class order and task splits of a class-incremental scenario (pure functions).

Conventions of method-spec Section 1.1-1.2 (PyCIL/PASS): the class order is NumPy's legacy
``RandomState(seed).permutation(n_classes)``; original label ``o`` becomes ``order.index(o)``;
task 0 holds the first F classes of the order, every later task the next C.
"""

from __future__ import annotations


def class_order(n_classes: int, seed: int) -> list[int]:
    """Original class ids in learning order: legacy ``RandomState(seed).permutation(n_classes)``.

    The legacy API is used on purpose: ``default_rng`` gives a different order, and seed 1993 under
    the legacy API is the order every NECIL paper since PASS reports on.
    """
    import numpy as np

    if n_classes < 1:
        raise ValueError(f"n_classes: expected a positive integer, got {n_classes}")
    return [int(c) for c in np.random.RandomState(seed).permutation(n_classes)]


def task_sizes(n_classes: int, initial_increment: int, increment: int) -> list[int]:
    """Number of classes per task, PyCIL's rule: ``[F]``, then ``C`` while it fits, then the rest."""
    if not 0 < initial_increment <= n_classes:
        raise ValueError(
            f"initial_increment: expected 1..{n_classes} (the number of classes), got {initial_increment}"
        )
    if increment < 1:
        raise ValueError(f"increment: expected a positive integer, got {increment}")
    sizes = [initial_increment]
    while sum(sizes) + increment < n_classes:
        sizes.append(increment)
    if sum(sizes) < n_classes:
        sizes.append(n_classes - sum(sizes))
    return sizes


def task_classes(order: list[int], initial_increment: int, increment: int) -> list[list[int]]:
    """Original class ids of each task, in learning order (task 0 = the base task)."""
    sizes = task_sizes(len(order), initial_increment, increment)
    tasks, start = [], 0
    for size in sizes:
        tasks.append([int(c) for c in order[start : start + size]])
        start += size
    return tasks


def remap_labels(order: list[int]) -> dict[int, int]:
    """Original label -> incremental label (its position in the class order)."""
    return {int(original): position for position, original in enumerate(order)}
