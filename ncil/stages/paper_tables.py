"""``paper-tables``: the paper's Tables 1, 2, 3, 5 (Markdown and CSV) in results/tables/.

Which cells each table has and their text are ``ncil.report.table_texts``'s (pure).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil.stages import common

VERB = "paper-tables"
HELP = "the paper's Tables 1, 2, 3, 5 (Markdown and CSV) in results/tables/"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    metrics: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_params(parser)
    common.add_log(parser)
    parser.add_argument("--metrics", nargs="*", default=[], help="metrics.json files of the grid (missing runs: 'not run')")


def run(args: Args) -> None:
    from ncil import io, report
    from ncil.progress import say

    _, raw = common.load_params(args.params)
    metrics = [io.read_json(path, "metrics file") for path in args.metrics]
    texts = report.table_texts(raw, metrics)
    io.write_files(texts)  # as a set: a kill leaves files missing, never old and new side by side
    for path in texts:
        say(f"wrote {path}")
