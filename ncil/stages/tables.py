"""``tables``: a data set's results table (mean and std over seeds), Markdown and CSV.

The rows and their text are ``ncil.tables``'s; this stage reads the metrics files and writes both.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil.stages import common

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
    common.add_params(parser)
    common.add_log(parser)
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--csv", required=True)


def table_texts(p, metrics: list[dict]) -> tuple[str, str]:
    """(Markdown, CSV) of the results table of ``metrics`` (pure)."""
    from ncil import tables
    from ncil.metrics import CONVENTION

    rows = tables.aggregate(metrics)
    context = {"preset": p.preset, "convention": CONVENTION, "order_seed": p.order_seed, "seeds": list(p.seeds)}
    return tables.to_markdown(rows, p.dataset.name, context), tables.to_csv(rows)


def run(args: Args) -> None:
    from ncil import io

    common.refuse_overlap({"--markdown": args.markdown, "--csv": args.csv, "--log": args.log},
                          {"--params": args.params, **{f"--metrics[{i}]": m for i, m in enumerate(args.metrics)}})
    p, _ = common.load_params(args.params)
    markdown, csv = table_texts(p, common.read_metrics(args.metrics))
    io.write_files({args.markdown: markdown, args.csv: csv})
