"""``evaluate``: every checkpoint's predictions on the test (or validation) images it has seen.

Each checkpoint must be task t of the split (its task index, class order and seen classes), and no
output may be an input. A FeCAM run (classifier fecam) also names its tasks' class statistics
(``--statistics``, one per checkpoint, each checked against the hash its checkpoint records); checkpoint t
predicts with the statistics of tasks 0..t. The predictions are ``ncil.learning.prediction.evaluate_checkpoint``'s
(``predict_fecam`` there for FeCAM); the table's layout is ``ncil.pipeline.io.write_predictions``'s.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "evaluate"
HELP = "predict the test images seen after each task"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    split: str
    checkpoints: tuple[str, ...]
    out: tuple[str, ...]
    data_split: str
    statistics: tuple[str, ...] = ()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--split", required=True)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints of tasks 0..T-1")
    parser.add_argument("--out", nargs="+", required=True, help="one predictions table per checkpoint")
    parser.add_argument("--statistics", nargs="+", default=(),
                        help="FeCAM (classifier fecam): each task's class statistics, one per checkpoint")
    parser.add_argument("--data-split", choices=("test", "val"), default="test",
                        help="images to predict: test (reported numbers) or val (carved from train; for tuning)")


def check_paths(args: Args) -> None:
    if len(args.checkpoints) != len(args.out):
        raise cli.UsageError(f"--checkpoints ({len(args.checkpoints)} paths) and --out ({len(args.out)} paths) "
                             "need the same number of paths")
    if args.statistics and len(args.statistics) != len(args.checkpoints):
        raise cli.UsageError(f"--checkpoints ({len(args.checkpoints)} paths) and --statistics "
                             f"({len(args.statistics)} paths) need the same number of paths")
    cli.refuse_overlap(
        {**{f"--out[{i}]": o for i, o in enumerate(args.out)}, "--log": args.log},
        {"--params": args.params, "--split": args.split, **{f"--checkpoints[{i}]": c for i, c in enumerate(args.checkpoints)},
         **{f"--statistics[{i}]": s for i, s in enumerate(args.statistics)}},
    )


def check_checkpoint(checkpoint: dict, task: int, split: dict, ckpt_file: str, split_file: str) -> None:
    """Refuse a checkpoint that is not task ``task`` of ``split`` (pure; names both files and the field)."""
    from ncil.data.splits import seen_classes
    from ncil.pipeline.io import ArtifactError

    if len(split["tasks"]) <= task:
        raise ArtifactError(f"{ckpt_file}: task: {split_file} has only {len(split['tasks'])} tasks, "
                            f"this is checkpoint {task + 1} of --checkpoints")
    for key, want in (("task", task), ("class_order", split["class_order"]), ("seen_classes", seen_classes(split, task))):
        found = checkpoint.get(key)
        if (list(found) if isinstance(found, (list, tuple)) else found) != want:
            raise ArtifactError(f"{ckpt_file}: {key}: expected {want!r} (task {task} of {split_file}), found {found!r}")


def check_task_statistics(statistics: dict, task: int, split: dict, stats_file: str) -> dict:
    """Refuse statistics that are not task ``task``'s classes of ``split`` (pure; names the file and column)."""
    from ncil.data.scenario import remap_labels
    from ncil.pipeline.io import ArtifactError

    if statistics["producing_task"] != task:
        raise ArtifactError(f"{stats_file}: ncil.task: expected {task} (--statistics[{task}]), "
                            f"found {statistics['producing_task']}")
    want = sorted(split["tasks"][task])
    if sorted(statistics["original_class"].tolist()) != want:
        raise ArtifactError(f"{stats_file}: original_class: expected task {task}'s classes {want}, "
                            f"found {sorted(statistics['original_class'].tolist())}")
    label_map = remap_labels(split["class_order"])
    if any(label_map[int(o)] != int(c) for o, c in zip(statistics["original_class"], statistics["class_id"])):
        raise ArtifactError(f"{stats_file}: class_id: expected the class order's labels of original_class")
    return statistics


def check_statistics_use(checkpoint: dict, statistics_given: bool, ckpt_file: str) -> None:
    """A FeCAM checkpoint needs ``--statistics``; any other refuses them (pure; names the checkpoint)."""
    from ncil.learning.prediction import uses_statistics
    from ncil.pipeline.io import ArtifactError

    if uses_statistics(checkpoint) and not statistics_given:
        raise ArtifactError(f"{ckpt_file}: config.method_config.classifier: fecam predicts with class statistics: "
                            "name every task's with --statistics")
    if not uses_statistics(checkpoint) and statistics_given:
        raise ArtifactError(f"{ckpt_file}: config.method_config.classifier: expected fecam with --statistics, found "
                            f"{checkpoint['config']['method_config'].get('classifier', 'head')}")


def check_prototypes(checkpoint: dict, ckpt_file: str) -> None:
    """An NCM checkpoint (classifier ncm) holds its prototypes, one row per seen class (pure; names the file)."""
    from ncil.learning.prediction import uses_prototypes
    from ncil.pipeline.io import ArtifactError

    if not uses_prototypes(checkpoint):
        return
    found = checkpoint.get("prototypes")
    n_seen = len(checkpoint["seen_classes"])
    if found is None or found.ndim != 2 or found.shape[0] != n_seen:
        shape = None if found is None else tuple(found.shape)
        raise ArtifactError(f"{ckpt_file}: prototypes: classifier ncm predicts with one prototype per seen class: "
                            f"expected ({n_seen}, D), found {shape}")


FECAM_FIELDS = ("fecam_tukey", "fecam_shrink_times")  # what the statistics and the classifier depend on


def check_fecam_agreement(checkpoints: list[dict], files: list[str]) -> None:
    """Refuse a FeCAM run whose checkpoints disagree on the FeCAM options (pure; names the file and the field).

    Task 0 is shared and is not retrained when only a method option changes, so after an edit of ``fecam_tukey``
    or ``fecam_shrink_times`` task 0 could hold statistics of the old value and tasks t >= 1 of the new one.
    """
    from ncil.learning.prediction import fecam_settings
    from ncil.pipeline.io import ArtifactError

    first = fecam_settings(checkpoints[0])
    for checkpoint, path in zip(checkpoints[1:], files[1:]):
        found = fecam_settings(checkpoint)
        for field in FECAM_FIELDS:
            if getattr(found, field) != getattr(first, field):
                raise ArtifactError(f"{path}: config.method_config.{field}: expected {getattr(first, field)!r} as "
                                    f"{files[0]} (one FeCAM run), found {getattr(found, field)!r}: retrain the "
                                    "run's task 0 (its base recipe) or every later task with one value")


def accuracy(columns: dict) -> float:
    return 100.0 * (columns["prediction"] == columns["label"]).mean()


def run(args: Args) -> None:
    from ncil.data.arrays import load_split
    from ncil.data.splits import read_split
    from ncil.learning.prediction import evaluate_checkpoint
    from ncil.pipeline import io
    from ncil.pipeline.progress import logger

    check_paths(args)
    p, _ = cli.load_params(args.params)
    split = read_split(args.split)
    io.ensure_writable(*args.out)
    log = logger()
    stats_files = list(args.statistics) or [None] * len(args.checkpoints)
    statistics, checkpoints = [], []
    for task, (ckpt_path, stats_path) in enumerate(zip(args.checkpoints, stats_files)):
        # every checkpoint (and its statistics) checked before any output is written
        ckpt = io.load_checkpoint(ckpt_path, statistics_file=stats_path)
        check_checkpoint(ckpt, task, split, ckpt_path, args.split)
        check_statistics_use(ckpt, stats_path is not None, ckpt_path)
        check_prototypes(ckpt, ckpt_path)
        if stats_path is not None:
            statistics.append(check_task_statistics(io.read_statistics(stats_path), task, split, stats_path))
            checkpoints.append({"config": ckpt["config"]})
    if statistics:
        check_fecam_agreement(checkpoints, list(args.checkpoints))
    io.remove_outputs(*args.out)  # an interrupted run leaves fewer tables than tasks, which summarize refuses
    test = load_split(p.dataset.name, args.data_split)
    for task, (ckpt_path, out) in enumerate(zip(args.checkpoints, args.out)):
        ckpt = io.load_checkpoint(ckpt_path)
        columns = evaluate_checkpoint(p, ckpt, test, split["tasks"], statistics[: task + 1] if statistics else None)
        io.write_predictions(out, columns, task=task)
        log.info("task %d: %d test images, accuracy %.2f%% -> %s", task, len(columns["label"]), accuracy(columns), out)
