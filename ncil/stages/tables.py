"""``tables``: a data set's results table (mean and std over seeds), Markdown and CSV.

The rows and their text are ``ncil.reports.results_table``'s; this stage reads the metrics files and writes both.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "tables"
HELP = "results table (mean and std over seeds) of a data set"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    metrics: tuple[str, ...]
    markdown: str
    csv: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--csv", required=True)


def table_texts(p, metrics: list[dict]) -> tuple[str, str]:
    """(Markdown, CSV) of the results table of ``metrics`` (pure)."""
    from ncil.reports import results_table
    from ncil.reports.metrics import CONVENTION

    rows = results_table.aggregate(metrics)
    context = {"preset": p.preset, "convention": CONVENTION, "order_seed": p.order_seed, "seeds": list(p.seeds)}
    return results_table.to_markdown(rows, p.dataset.name, context), results_table.to_csv(rows)


def run(args: Args) -> None:
    from ncil.pipeline import io

    cli.refuse_overlap({"--markdown": args.markdown, "--csv": args.csv, "--log": args.log},
                       {"--params": args.params, **{f"--metrics[{i}]": m for i, m in enumerate(args.metrics)}})
    p, _ = cli.load_params(args.params)
    markdown, csv = table_texts(p, cli.read_metrics(args.metrics))
    io.write_files({args.markdown: markdown, args.csv: csv})
