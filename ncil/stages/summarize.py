"""``summarize``: one run's accuracy matrix, Avg, Last and forgetting, as ``metrics.json``.

The file's layout is ``ncil.reports.metrics_json``'s. The evaluations must be exactly one per task of the
split, in order; the training precision recorded in the provenance is read from the checkpoints given with
``--checkpoints``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli
from ncil.reports.metrics_json import build_metrics, training_precision

VERB = "summarize"
HELP = "accuracy matrix, Avg, Last and forgetting of one run"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    split: str
    evals: tuple[str, ...]
    setting: str
    method: str
    seed: int
    out: str
    checkpoints: tuple[str, ...] = ()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--split", required=True)
    parser.add_argument("--evals", nargs="+", required=True)
    parser.add_argument("--setting", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoints", nargs="+", default=(),
                        help="the run's checkpoints after tasks 0..T-1: their training precision is recorded")


def check_evaluations(evaluations: list[dict], files, split: dict, split_file: str) -> None:
    """Exactly one evaluation per task of the split, task t's in position t (pure)."""
    from ncil.pipeline.io import ArtifactError

    n_tasks = len(split["tasks"])
    if len(evaluations) != n_tasks:
        raise ArtifactError(f"--evals: {split_file} has {n_tasks} tasks, expected one evaluation per task, "
                            f"found {len(evaluations)} ({', '.join(map(str, files))})")
    for task, (path, ev) in enumerate(zip(files, evaluations)):
        if ev["task"] != task:
            raise ArtifactError(f"{path}: ncil.task: expected {task} (position {task} of --evals, task {task} of "
                                f"{split_file}), found {ev['task']}")


def run(args: Args) -> None:
    from ncil.data.splits import read_split
    from ncil.pipeline import fingerprints
    from ncil.pipeline import io

    cli.refuse_overlap({"--out": args.out, "--log": args.log},
                       {"--params": args.params, "--split": args.split,
                        **{f"--evals[{i}]": e for i, e in enumerate(args.evals)}})
    p, _ = cli.load_params(args.params)
    if args.method not in p.method:
        raise cli.UsageError(f"--method {args.method}: not a method of {args.params} "
                             f"(expected one of {', '.join(p.method)})")
    split = read_split(args.split)
    evaluations = [io.read_predictions(path, split["tasks"]) for path in args.evals]
    check_evaluations(evaluations, args.evals, split, args.split)
    precision = None
    if args.checkpoints:
        if len(args.checkpoints) != len(args.evals):
            raise io.ArtifactError(f"--checkpoints: expected one checkpoint per evaluation ({len(args.evals)}), "
                                   f"found {len(args.checkpoints)}")
        precision = training_precision([io.load_checkpoint(c)["config"] for c in args.checkpoints])
    run_identity = {"dataset": p.dataset.name, "setting": args.setting, "method": args.method, "seed": args.seed}
    io.write_json(args.out, build_metrics(evaluations, split, run_identity, p.method[args.method].preset,
                                          p.order_seed, fingerprints.for_metrics(), precision))
