"""Tune a method's settings on the validation split (never the test split), in one process.

Trains every task of one setting for the given seeds with the configuration composed from ``conf/``
plus Hydra overrides, evaluates each task's model on the *validation* images of the classes seen so
far, and prints Avg / Last / forgetting (the paper's definitions, ``ncil.reports.metrics``) and the diagonal
a[k, k] (is each new task learned at all?). Nothing is written under data/, runs/ or results/;
task-0 models are cached under --cache keyed by everything that shapes them.

The paper data sets' reported grids train on the whole training set (``dataset.val_fraction: 0`` in
conf/experiment/, as the paper did), so their prepared validation split is empty. For them this
script carves ``--val-fraction`` (0.1) of each class's training images out in memory, with the
data set's ``split_seed`` and the prepare step's own rule (``stratified_split``): the same images a
``dataset.val_fraction=0.1`` prepare would have set aside. It trains on the rest and evaluates on those;
nothing reported ever sees them held out. A data set prepared with validation images (digits: 0.1)
uses its prepared split as it is.

    python scripts/tune_on_val.py --method ours --setting base4_inc2 --seeds 1,2 \
        method.ours.feature_kd=1.0 train.epochs=30
    python scripts/tune_on_val.py --method ours --setting base50_inc10 +experiment=cifar100
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's ncil package
from ncil.data import arrays
from ncil.data.preparation import stratified_split
from ncil.data.splits import build_split
from ncil.learning.prediction import evaluate_checkpoint
from ncil.learning.training import make_job, method_snapshot, train_task
from ncil.pipeline import io
from ncil.pipeline.config import parse_params, to_dict
from ncil.pipeline.hydra_conf import compose
from ncil.reports.metrics import accuracy_matrix, summarize


def cached_task0(p, job, train, cache: Path, logger) -> tuple[dict, dict]:
    """Task 0's checkpoint and centers, from the cache (keyed by everything that shapes them) or trained
    and stored there in the pipeline's formats (``ncil.pipeline.io``: hashed, checked on load)."""
    shape = {"seed": job.seed, "tasks0": job.tasks[0], "model": to_dict(p.model), "train": to_dict(p.train),
             "dataset": to_dict(p.dataset), "recipe": method_snapshot(job), "threads": p.runtime.threads,
             "numerics": p.runtime.numerics, "train_images": len(train.labels)}  # a carved training set differs
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
    ckpt, centers_file = cache / f"{key}.pt", cache / f"{key}.centers.parquet"
    if ckpt.exists():
        return io.load_checkpoint(ckpt, centers_file), io.read_centers(centers_file)
    payload, centers = train_task(p, job, train, None, None, logger)
    io.write_centers(centers_file, centers, task=0, feature_dim=centers["center"].shape[1])
    io.save_checkpoint(ckpt, payload, centers_file=centers_file)
    return payload, centers


TUNING_VAL_FRACTION = 0.1  # --val-fraction's default: the share carved out when the prepared val split is empty


def tuning_splits(train: arrays.Split, val: arrays.Split, val_fraction: float,
                  split_seed: int) -> tuple[arrays.Split, arrays.Split]:
    """(images to train on, images to tune on) (pure).

    ``val`` non-empty (the data set was prepared with ``dataset.val_fraction > 0``): ``(train, val)``
    unchanged. Empty (a reported grid's data, prepared with ``val_fraction: 0``): per class,
    ``round(n * val_fraction)`` of ``train``'s images go to tuning, drawn by ``stratified_split`` with
    ``split_seed`` (what the prepare step would have carved), the rest stay for training.
    """
    if len(val.labels):
        return train, val
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction: expected a share in (0, 1) to carve from the training images "
                         f"(the prepared val split is empty), got {val_fraction}")
    rows = stratified_split(train.labels, 0.0, val_fraction, split_seed)
    return (arrays.Split(train.images[rows["train"]], train.labels[rows["train"]]),
            arrays.Split(train.images[rows["val"]], train.labels[rows["val"]]))


def run(p, method_name: str, setting: str, seed: int, split: str, cache: Path, logger,
        val_fraction: float = TUNING_VAL_FRACTION) -> dict:
    scenario = p.scenario[setting]
    record = build_split(p.dataset.name, p.dataset.n_classes, p.order_seed, scenario.initial_increment,
                         scenario.increment)  # the split stage's own record
    train = arrays.load_split(p.dataset.name, "train")
    if split == "val":
        train, held_out = tuning_splits(train, arrays.load_split(p.dataset.name, "val"), val_fraction,
                                        p.dataset.split_seed)
    else:
        held_out = train
    method = p.method[method_name]
    previous = centers = None
    evaluations = []
    for t in range(len(record["tasks"])):
        job = make_job(p, record, t, seed, method.base_recipe if t == 0 else method_name, method,
                       f"tuning/{setting}/split.json")  # the train stage's job record
        if t == 0:
            previous, centers = cached_task0(p, job, train, cache, logger)
        else:
            previous, centers = train_task(p, job, train, previous, centers, logger)
        evaluations.append(evaluate_checkpoint(p, previous, held_out, record["tasks"]))  # the evaluate stage's core
    acc, counts = accuracy_matrix(evaluations)
    return {**summarize(acc, counts), "diagonal": np.diag(acc).round(1).tolist(), "first_task": acc[:, 0].round(1).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--setting", default="base4_inc2")
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[1],
                    help="comma-separated run seeds, e.g. 1,2 (default 1)")
    ap.add_argument("--split", default="val", choices=["val", "train"], help="never the test split")
    ap.add_argument("--val-fraction", type=float, default=TUNING_VAL_FRACTION,
                    help="share of each class's training images to tune on when the prepared val split is empty "
                         f"(the paper data sets' reported grids); default {TUNING_VAL_FRACTION}")
    ap.add_argument("--cache", default="/tmp/ncil_tune_cache")
    ap.add_argument("override", nargs="*")
    args = ap.parse_args()
    p = parse_params(compose([f"method=[{args.method}]", *args.override]))
    logger = logging.getLogger("tune")
    logger.setLevel(logging.WARNING)
    results = []
    start = time.perf_counter()
    for seed in args.seeds:
        results.append(run(p, args.method, args.setting, seed, args.split, Path(args.cache), logger, args.val_fraction))
    avg = np.mean([r["avg_accuracy"] for r in results])
    last = np.mean([r["last_accuracy"] for r in results])
    forg = np.mean([r["avg_forgetting"] for r in results])
    print(f"{args.method} {args.setting} {' '.join(args.override)} | seeds {args.seeds} | {args.split} "
          f"Avg {avg:.1f} Last {last:.1f} F {forg:.1f} | diag {[r['diagonal'] for r in results]} "
          f"| task0 {[r['first_task'] for r in results]} | {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
