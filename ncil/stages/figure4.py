"""``figure4``: Figure 4, PKS weight maps of test images from ViT checkpoints (PNG and CSV).

The maps and the drawing are ``ncil.reports.plots.weight_map_files``' (``verify`` recomputes them through
it).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "figure4"
HELP = "Figure 4: PKS weight maps of test images from ViT checkpoints (PNG and CSV)"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    split: str
    checkpoints: tuple[str, ...]
    images: int
    p: int
    out_png: str
    out_csv: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--split", required=True, help="split.json of the run (the images come from its base task)")
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints after the tasks to show")
    parser.add_argument("--images", type=int, default=4, help="images to show (one per base-task class; default 4)")
    parser.add_argument("--p", type=int, default=2, choices=(1, 2), help="norm of the CLS-to-patch distance (default 2)")
    parser.add_argument("--out-png", required=True)
    parser.add_argument("--out-csv", required=True)


def run(args: Args) -> None:
    from ncil.pipeline import io
    from ncil.pipeline.progress import say
    from ncil.reports import plots

    cli.refuse_overlap({"--out-png": args.out_png, "--out-csv": args.out_csv, "--log": args.log},
                       {"--params": args.params, "--split": args.split,
                        **{f"--checkpoints[{i}]": c for i, c in enumerate(args.checkpoints)}})
    p, _ = cli.load_params(args.params)
    csv_text, png, n = plots.weight_map_files(p, args.split, args.checkpoints, args.images, args.p)
    io.write_files({args.out_csv: csv_text, args.out_png: png})
    say(f"wrote {args.out_png} and {args.out_csv} ({n} checkpoints)")
