"""``summarize``: one run's accuracy matrix, Avg, Last and forgetting, as ``metrics.json``.

The file's layout lives here only: ``build_metrics`` writes it and ``validate_metrics`` checks it
(``ncil.reports.recompute`` uses both). The evaluations must be exactly one per task of the split, in order.

``provenance.precision`` is the arithmetic the run's checkpoints were trained in (each checkpoint's
``config.runtime.precision``, resolved on its device by ``ncil.pipeline.config.resolve_precision``: fp32 on a
CPU), read from the checkpoints given with ``--checkpoints``; files written without it lack the key.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "summarize"
HELP = "accuracy matrix, Avg, Last and forgetting of one run"
RUN_KEYS = ("dataset", "setting", "method", "seed", "label")
PROVENANCE_KEYS = ("preset", "metric_convention", "order_seed", "seed", "code_fingerprints", "class_order")
SUMMARY_KEYS = ("avg_accuracy", "last_accuracy", "avg_forgetting", "accuracy_per_step")  # metrics.summarize
TOP_LEVEL_KEYS = ("run", "provenance", "acc_matrix", "test_counts", *SUMMARY_KEYS, "variants")
OPTIONAL_KEYS = ("variants",)  # files written before the variants were added lack them
# provenance.precision is not in PROVENANCE_KEYS: files written before it was recorded lack it.
UNRECORDED_PRECISION = "unrecorded"  # a checkpoint (or metrics file) from before the precision was recorded


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


def join_values(values) -> str:
    """Distinct values, each split at ", ", joined by ", " shortest first, then alphabetically (pure; the
    tables join several runs' precisions, presets, ... the same way)."""
    found = {part for v in values for part in str(v).split(", ")}
    return ", ".join(sorted(found, key=lambda v: (len(v), v)))


def training_precision(configs: list[dict]) -> str:
    """The precision the checkpoints with these config snapshots were trained in (pure): each one's
    ``runtime.precision`` (``UNRECORDED_PRECISION`` where a snapshot has none: trained before it was
    recorded), the distinct values ``join_values``-joined (a run whose base task ran on a GPU in bf16 and
    the later tasks on a CPU: "bf16, fp32")."""
    return join_values(str(c.get("runtime", {}).get("precision", UNRECORDED_PRECISION)) for c in configs)


def build_metrics(evaluations: list[dict], split: dict, run: dict, preset: str, order_seed: int,
                  code_fingerprints: dict[str, str], precision: str | None = None) -> dict:
    """The metrics record of one run (pure). ``run``: dataset, setting, method, seed. ``precision``
    (``training_precision`` of its checkpoints): recorded in the provenance when given.
    ``code_fingerprints``: the code fingerprint of each step kind that made it (ncil/pipeline/fingerprints.py)."""
    from ncil.reports import metrics
    from ncil.pipeline.provenance import setting_label

    acc, counts = metrics.accuracy_matrix(evaluations)
    summary = metrics.summarize(acc, counts)
    n_tasks = len(split["tasks"])
    return {
        "run": {**run, "label": setting_label(split["initial_increment"], split["increment"], n_tasks)},
        "provenance": {"preset": preset, "metric_convention": metrics.CONVENTION, "order_seed": order_seed,
                       "seed": run["seed"], "code_fingerprints": dict(code_fingerprints), "class_order": split["class_order"],
                       **({} if precision is None else {"precision": precision})},
        "acc_matrix": [[None if v != v else float(v) for v in row] for row in acc],
        "test_counts": [int(c) for c in counts],
        **summary,
        # Other systems' conventions, under their own names (metrics.md); the tables never use them.
        "variants": metrics.variants(acc, counts, [len(t) for t in split["tasks"]]),
    }


def layout_problem(data) -> tuple[str, str] | None:
    """The first (section, key) of the metrics layout that ``data`` lacks, or None (pure)."""
    if not isinstance(data, dict):
        return "(top level)", "(a JSON object)"
    for key in TOP_LEVEL_KEYS:
        if key not in data and key not in OPTIONAL_KEYS:
            return "(top level)", key
    for section, keys in (("run", RUN_KEYS), ("provenance", PROVENANCE_KEYS)):
        if not isinstance(data[section], dict):
            return section, "(a JSON object)"
        for key in keys:
            if key not in data[section]:
                return section, key
    return None


def validate_metrics(data, source) -> dict:
    from ncil.pipeline.io import ArtifactError

    problem = layout_problem(data)
    if problem is not None:
        raise ArtifactError(f"{source}: {problem[0]}: {problem[1]}: missing from the metrics file")
    return data


def run(args: Args) -> None:
    from ncil.pipeline import io
    from ncil.pipeline import fingerprints
    from ncil.stages.split import read_split

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
