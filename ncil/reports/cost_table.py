"""What a setting cost: wall time and peak memory per task, from Snakemake's benchmark files.

Benchmarks (``benchmarks/<step>/.../*.tsv``: ``s`` wall seconds, ``max_rss`` peak resident MB) live
beside, not inside, the artifacts that must be bit-identical: timings differ on every run. This module
turns them into a table (pure functions; the ``costs`` verb reads and writes the files).
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from ncil.pipeline import experiment_grid, paths


def read_benchmark(text: str, source: str) -> dict:
    """The first data row of a Snakemake benchmark TSV as {"s": seconds, "max_rss": MB}."""
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ValueError(f"{source}: not a Snakemake benchmark file (no 's' column)")

    def num(key):
        try:
            return float(rows[0].get(key, "nan"))
        except ValueError:  # Snakemake writes "NA" when it could not measure
            return float("nan")

    return {"s": num("s"), "max_rss": num("max_rss")}


def run_benchmarks(params: dict) -> list[tuple[experiment_grid.Run, int, str]]:
    """(run, task, benchmark file) of every training task of the grid (task 0's file is the shared one)."""
    return [(run, t, paths.benchmark_file("train", experiment_grid.TrainJob(run, t).name))
            for run in experiment_grid.runs(params) for t in range(run.n_tasks)]


def cost_rows(records: list[dict]) -> list[dict]:
    """Per (setting, method): training wall time summed over tasks (mean over the seeds measured), the
    slowest task, and the peak memory of any task. ``records``: setting, label, method, seed, task, s, max_rss."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["label"], r["method"]), []).append(r)
    out = []
    for (label, method), recs in groups.items():
        per_seed = {}
        for r in recs:
            per_seed.setdefault(r["seed"], []).append(r["s"])
        totals = [float(np.sum(v)) for v in per_seed.values()]
        out.append({"setting": label, "method": method, "seeds": len(per_seed), "tasks": len(recs),
                    "train_s_per_run": float(np.mean(totals)), "slowest_task_s": float(np.nanmax([r["s"] for r in recs])),
                    "peak_rss_mb": float(np.nanmax([r["max_rss"] for r in recs]))
                    if any(not math.isnan(r["max_rss"]) for r in recs) else float("nan")})
    return out


def to_markdown(rows: list[dict], dataset: str) -> str:
    lines = [f"# What each setting cost on {dataset}", "",
             "Training wall time summed over the tasks of a run (the shared base task included; mean over the "
             "seeds measured), the slowest task, and the peak resident memory of any task, from Snakemake's "
             "benchmark files. Timings vary between runs and machines; they are not part of the verified results.",
             "", "| setting | method | seeds | tasks measured | train s / run | slowest task s | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['method']} | {r['seeds']} | {r['tasks']} | {r['train_s_per_run']:.1f} | "
                     f"{r['slowest_task_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["setting", "method", "seeds", "tasks", "train_s_per_run", "slowest_task_s", "peak_rss_mb"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()
