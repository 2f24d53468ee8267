"""``figures``: Figure 3, the accuracy after each task of every setting (PNG and its data as CSV).

The curves are ``ncil.reports.report.curve_tables``'s and the drawing ``ncil.reports.plots``' (pure).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "figures"
HELP = "Figure 3: accuracy per task of every setting (PNG and CSV) in results/figures/"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    metrics: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--metrics", nargs="*", default=[], help="metrics.json files of the grid")


def run(args: Args) -> None:
    from ncil.pipeline import io
    from ncil.pipeline.progress import say
    from ncil.reports import plots, report

    _, raw = cli.load_params(args.params)
    metrics = cli.read_metrics(args.metrics)
    outputs, notes = {}, []
    for png, (title, table) in report.curve_tables(raw, metrics).items():
        outputs[png[: -len(".png")] + ".csv"] = plots.table_to_csv(table)
        outputs[png] = plots.png_bytes(plots.draw_curves(table, title))
        notes.append(f"wrote {png} ({len(plots.curve_methods(table))} of "
                     f"{len(plots.curve_methods(table, False))} methods with results)")
    io.write_files(outputs)  # as a set: a kill leaves files missing, never old and new side by side
    for note in notes:
        say(note)
