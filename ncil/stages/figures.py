"""``figures``: Figure 3, the accuracy after each task of every setting (PNG and its data as CSV).

The curves are ``ncil.report.curve_tables``'s and the drawing ``ncil.figures``' (pure).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil.stages import common

VERB = "figures"
HELP = "Figure 3: accuracy per task of every setting (PNG and CSV) in results/figures/"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    metrics: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_params(parser)
    common.add_log(parser)
    parser.add_argument("--metrics", nargs="*", default=[], help="metrics.json files of the grid")


def run(args: Args) -> None:
    from ncil import figures, io, report
    from ncil.progress import say

    _, raw = common.load_params(args.params)
    metrics = common.read_metrics(args.metrics)
    outputs, notes = {}, []
    for png, (title, table) in report.curve_tables(raw, metrics).items():
        outputs[png[: -len(".png")] + ".csv"] = figures.table_to_csv(table)
        outputs[png] = figures.png_bytes(figures.draw_curves(table, title))
        notes.append(f"wrote {png} ({len(figures.curve_methods(table))} of "
                     f"{len(figures.curve_methods(table, False))} methods with results)")
    io.write_files(outputs)  # as a set: a kill leaves files missing, never old and new side by side
    for note in notes:
        say(note)
