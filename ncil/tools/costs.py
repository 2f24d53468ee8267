"""``costs``: wall time and peak memory per setting and method, from Snakemake's benchmark files."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "costs"
HELP = "wall time and peak memory per setting and method from benchmarks/, in results/costs/ (a report item)"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    root: str
    out: str | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--root", default=".", help="project folder holding benchmarks/ (default .)")
    parser.add_argument("--out", default=None,
                        help="Markdown table, CSV beside (default: results/costs/<dataset>_costs.md under --root)")


def run(args: Args) -> None:
    from pathlib import Path

    from ncil.pipeline import experiment_grid, io, paths
    from ncil.pipeline.progress import say
    from ncil.pipeline.provenance import setting_label
    from ncil.reports import cost_table

    _, raw = cli.load_params(args.params)
    records, missing = [], 0
    for run_, task, bench in cost_table.run_benchmarks(raw):
        path = Path(args.root) / bench
        if not path.is_file():
            missing += 1
            continue
        records.append({"label": setting_label(run_.initial, run_.increment, run_.n_tasks), "method": run_.method,
                        "seed": run_.seed, "task": task, **cost_table.read_benchmark(path.read_text(), str(path))})
    rows = cost_table.cost_rows(records)
    dataset = raw["dataset"]["name"]
    out = Path(args.out) if args.out else Path(args.root) / paths.cost_table_file(experiment_grid.grid_folder(raw))
    if out.suffix != ".md":
        raise cli.UsageError(f"--out {out}: expected a Markdown file name ending in .md (the CSV goes beside)")
    markdown = cost_table.to_markdown(rows, dataset)
    if missing:  # said in the table itself, so a reader of the report sees why rows are absent
        markdown += (f"\n{missing} of {missing + len(records)} training tasks have no benchmark file "
                     "(benchmarks/train/...: run by `dvc repro`, or not run here yet) and are not counted.\n")
    io.write_files({out.with_suffix(".md"): markdown, out.with_suffix(".csv"): cost_table.to_csv(rows)})
    say(f"wrote {out.with_suffix('.md')} ({len(records)} task benchmarks; {missing} not found: run the workflow "
        "with Snakemake to record them)")
