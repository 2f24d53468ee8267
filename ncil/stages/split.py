"""``split``: the class order and the classes of each task, as ``split.json`` (its layout:
``ncil.data.splits``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli
from ncil.data.splits import build_split

VERB = "split"
HELP = "write the class order and the classes of each task"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    initial: int
    increment: int
    out: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--initial", type=int, required=True, help="F: classes of the base task")
    parser.add_argument("--increment", type=int, default=0, help="C: classes per later task (0: base task only)")
    parser.add_argument("--out", required=True)


def run(args: Args) -> None:
    from ncil.pipeline import io

    p, _ = cli.load_params(args.params)
    try:
        split = build_split(p.dataset.name, p.dataset.n_classes, p.order_seed, args.initial, args.increment, p.class_order)
    except ValueError as err:  # F or C outside the data set's classes
        raise cli.UsageError(f"--initial {args.initial} --increment {args.increment}: {err}") from None
    io.write_json(args.out, split)
