"""Tune a method's settings on the validation split (never the test split), in one process.

Trains every task of one setting for the given seeds with the configuration composed from ``conf/``
plus Hydra overrides, evaluates each task's model on the *validation* images of the classes seen so
far, and prints Avg / Last / forgetting (the paper's definitions, ``ncil.metrics``) and the diagonal
a[k, k] (is each new task learned at all?). Nothing is written under data/, runs/ or results/;
task-0 models are cached under --cache keyed by everything that shapes them.

    python scripts/tune_on_val.py --method ours --setting base4_inc2 --seeds 1,2 \
        method.ours.feature_kd=1.0 train.epochs=30
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
from ncil import io
from ncil.config import parse_params, to_dict
from ncil.data import arrays
from ncil.evaluate import evaluate_checkpoint
from ncil.hydra_conf import compose
from ncil.metrics import accuracy_matrix, summarize
from ncil.stages.split import build_split
from ncil.stages.train import make_job
from ncil.train import method_snapshot, train_task


def cached_task0(p, job, train, cache: Path, logger) -> tuple[dict, dict]:
    """Task 0's checkpoint and centers, from the cache (keyed by everything that shapes them) or trained
    and stored there in the pipeline's formats (``ncil.io``: hashed, checked on load)."""
    shape = {"seed": job.seed, "tasks0": job.tasks[0], "model": to_dict(p.model), "train": to_dict(p.train),
             "dataset": to_dict(p.dataset), "recipe": method_snapshot(job), "threads": p.runtime.threads,
             "numerics": p.runtime.numerics}
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
    ckpt, centers_file = cache / f"{key}.pt", cache / f"{key}.centers.parquet"
    if ckpt.exists():
        return io.load_checkpoint(ckpt, centers_file), io.read_centers(centers_file)
    payload, centers = train_task(p, job, train, None, None, logger)
    io.write_centers(centers_file, centers, task=0, feature_dim=centers["center"].shape[1])
    io.save_checkpoint(ckpt, payload, centers_file=centers_file)
    return payload, centers


def run(p, method_name: str, setting: str, seed: int, split: str, cache: Path, logger) -> dict:
    scenario = p.scenario[setting]
    record = build_split(p.dataset.name, p.dataset.n_classes, p.order_seed, scenario.initial_increment,
                         scenario.increment)  # the split stage's own record
    train, held_out = arrays.load_split(p.dataset.name, "train"), arrays.load_split(p.dataset.name, split)
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
    ap.add_argument("--cache", default="/tmp/ncil_tune_cache")
    ap.add_argument("override", nargs="*")
    args = ap.parse_args()
    p = parse_params(compose([f"method=[{args.method}]", *args.override]))
    logger = logging.getLogger("tune")
    logger.setLevel(logging.WARNING)
    results = []
    start = time.perf_counter()
    for seed in args.seeds:
        results.append(run(p, args.method, args.setting, seed, args.split, Path(args.cache), logger))
    avg = np.mean([r["avg_accuracy"] for r in results])
    last = np.mean([r["last_accuracy"] for r in results])
    forg = np.mean([r["avg_forgetting"] for r in results])
    print(f"{args.method} {args.setting} {' '.join(args.override)} | seeds {args.seeds} | {args.split} "
          f"Avg {avg:.1f} Last {last:.1f} F {forg:.1f} | diag {[r['diagonal'] for r in results]} "
          f"| task0 {[r['first_task'] for r in results]} | {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
