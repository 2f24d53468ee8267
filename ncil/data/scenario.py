"""Class order and task splits of a class-incremental scenario (pure functions).

Conventions of method-spec Section 1.1-1.2 (PyCIL/PASS): the class order is NumPy's legacy
``RandomState(seed).permutation(n_classes)``; original label ``o`` becomes ``order.index(o)``;
task 0 holds the first F classes of the order, every later task the next C (C divides the rest).
"""

from __future__ import annotations

ORDER_SEED_MAX = 2**32 - 1  # the seeds NumPy's legacy RandomState accepts


def class_order(n_classes: int, seed: int) -> list[int]:
    """Original class ids in learning order: legacy ``RandomState(seed).permutation(n_classes)``.

    The legacy API is used on purpose: ``default_rng`` gives a different order, and seed 1993 under
    the legacy API is the order every NECIL paper since PASS reports on.
    """
    import numpy as np

    if n_classes < 1:
        raise ValueError(f"n_classes: expected a positive integer, got {n_classes}")
    if not 0 <= seed <= ORDER_SEED_MAX:
        raise ValueError(
            f"order_seed: expected an integer in 0..{ORDER_SEED_MAX} (NumPy's legacy RandomState), got {seed}"
        )
    return [int(c) for c in np.random.RandomState(seed).permutation(n_classes)]


def task_sizes(n_classes: int, initial_increment: int, increment: int) -> list[int]:
    """Number of classes per task: ``[F]``, then ``C`` for each incremental task.

    ``C`` must divide the ``n_classes - F`` classes after the base task, and at least one incremental
    task must follow: every setting is then exactly ``F + C x T`` (``ncil.pipeline.provenance.setting_label``),
    the notation of the paper's tables. PyCIL would make the remainder a last, smaller task ([4, 4, 2]
    for 10 classes, F = C = 4), which that label cannot name and no setting of the paper uses.
    """
    if not 0 < initial_increment < n_classes:
        raise ValueError(
            f"initial_increment: expected 1..{n_classes - 1} (fewer than the {n_classes} classes, so that "
            f"incremental tasks follow), got {initial_increment}"
        )
    rest = n_classes - initial_increment
    if increment < 1:
        raise ValueError(f"increment: expected a positive integer, got {increment}")
    if rest % increment:
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        partial = [initial_increment] + [increment] * (rest // increment) + [rest % increment]
        raise ValueError(
            f"increment: expected a divisor of the {rest} classes after the base task "
            f"({', '.join(map(str, divisors))}), "
            f"got {increment}: its tasks would have {partial} classes"
        )
    return [initial_increment] + [increment] * (rest // increment)


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
