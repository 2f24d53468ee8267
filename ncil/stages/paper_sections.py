"""``paper-sections``: this grid's data set's sections of Tables 1, 2, 3, 5 in results/tables/<dataset>/.

Each data set's sections are its own files (``paths.paper_section_files``), written only by that data
set's grid, so a second grid adds its sections and never rewrites another's (issue 10, item 8). The
cells and their text are ``ncil.reports.report.section_texts``'s (pure); ``paper-tables`` assembles the tables.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "paper-sections"
HELP = "this grid's data set's sections of Tables 1, 2, 3, 5 (Markdown and CSV) in results/tables/<dataset>/"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    metrics: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--metrics", nargs="*", default=[], help="metrics.json files of the grid (missing runs: 'not run')")


def run(args: Args) -> None:
    from ncil.pipeline import io
    from ncil.pipeline.progress import say
    from ncil.reports import report

    _, raw = cli.load_params(args.params)
    metrics = cli.read_metrics(args.metrics)
    texts = report.section_texts(raw, metrics)
    cli.refuse_overlap({f"section {p}": p for p in texts} | {"--log": args.log},
                       {"--params": args.params, **{f"--metrics[{i}]": m for i, m in enumerate(args.metrics)}})
    io.write_files(texts)  # as a set: a kill leaves files missing, never old and new side by side
    for path in texts:
        say(f"wrote {path}")
