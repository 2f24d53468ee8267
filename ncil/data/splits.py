"""The split file (``split.json``): the class order and the classes of each task.

Its layout lives here only: ``build_split`` makes the record the ``split`` step writes, and ``validate_split``
checks it on every read (train, evaluate, summarize, figure4, verify).
"""

from __future__ import annotations

SPLIT_KEYS = {"dataset": str, "order_seed": int, "class_order": list, "initial_increment": int, "increment": int,
              "tasks": list}


def build_split(dataset: str, n_classes: int, order_seed: int, initial: int, increment: int,
                explicit_order: tuple[int, ...] | list[int] | None = None) -> dict:
    """The split record (pure): the legacy class order of ``order_seed`` (or ``explicit_order``, a permutation
    of the ``n_classes`` ids that a protocol fixes, params ``class_order``) cut into tasks."""
    from ncil.data.scenario import class_order, task_classes

    if explicit_order is not None and sorted(explicit_order) != list(range(n_classes)):
        raise ValueError(f"class_order: expected a permutation of 0..{n_classes - 1}, got {list(explicit_order)}")
    order = class_order(n_classes, order_seed) if explicit_order is None else [int(c) for c in explicit_order]
    tasks = task_classes(order, initial, increment) if increment else [order[:initial]]
    return {"dataset": dataset, "order_seed": order_seed, "class_order": order, "initial_increment": initial,
            "increment": increment, "tasks": tasks}


def validate_split(split, source) -> dict:
    """``split`` if it has the layout ``build_split`` writes, else an ArtifactError naming ``source``,
    the key, what was found and what was expected."""
    from ncil.pipeline.io import ArtifactError

    if not isinstance(split, dict):
        raise ArtifactError(f"{source}: expected a split record (a JSON object), found {type(split).__name__}")
    for key, kind in SPLIT_KEYS.items():
        if key not in split:
            raise ArtifactError(f"{source}: {key}: missing from the split file")
        if not isinstance(split[key], kind) or isinstance(split[key], bool):
            raise ArtifactError(f"{source}: {key}: expected {kind.__name__}, found {split[key]!r}")
    tasks, order = split["tasks"], split["class_order"]
    if not tasks or not all(isinstance(t, list) and t for t in tasks):
        raise ArtifactError(f"{source}: tasks: expected a non-empty list of non-empty class lists, found {tasks!r}")
    flat = [c for t in tasks for c in t]
    if flat != order[: len(flat)]:
        raise ArtifactError(f"{source}: tasks: expected consecutive slices of class_order, found {tasks!r}")
    return split


def read_split(path) -> dict:
    from ncil.pipeline import io

    return validate_split(io.read_json(path, "split file"), path)


def seen_classes(split: dict, task: int) -> list[int]:
    """Original ids of the classes seen after task ``task`` (tasks 0..task), in learning order."""
    return [c for t in split["tasks"][: task + 1] for c in t]
