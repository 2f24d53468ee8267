"""``evaluate``: every checkpoint's predictions on the test (or validation) images it has seen.

Each checkpoint must be task t of the split (its task index, class order and seen classes), and no
output may be an input. The predictions are ``ncil.learning.prediction.evaluate_checkpoint``'s; the table's
layout is ``ncil.pipeline.io.write_predictions``'s.
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--split", required=True)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints of tasks 0..T-1")
    parser.add_argument("--out", nargs="+", required=True, help="one predictions table per checkpoint")
    parser.add_argument("--data-split", choices=("test", "val"), default="test",
                        help="images to predict: test (reported numbers) or val (carved from train; for tuning)")


def check_paths(args: Args) -> None:
    if len(args.checkpoints) != len(args.out):
        raise cli.UsageError(f"--checkpoints ({len(args.checkpoints)} paths) and --out ({len(args.out)} paths) "
                             "need the same number of paths")
    cli.refuse_overlap(
        {**{f"--out[{i}]": o for i, o in enumerate(args.out)}, "--log": args.log},
        {"--params": args.params, "--split": args.split, **{f"--checkpoints[{i}]": c for i, c in enumerate(args.checkpoints)}},
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
    for task, ckpt_path in enumerate(args.checkpoints):  # every checkpoint checked before any output is written
        check_checkpoint(io.load_checkpoint(ckpt_path), task, split, ckpt_path, args.split)
    io.remove_outputs(*args.out)  # an interrupted run leaves fewer tables than tasks, which summarize refuses
    test = load_split(p.dataset.name, args.data_split)
    for task, (ckpt_path, out) in enumerate(zip(args.checkpoints, args.out)):
        ckpt = io.load_checkpoint(ckpt_path)
        columns = evaluate_checkpoint(p, ckpt, test, split["tasks"])
        io.write_predictions(out, columns, task=task)
        log.info("task %d: %d test images, accuracy %.2f%% -> %s", task, len(columns["label"]), accuracy(columns), out)
