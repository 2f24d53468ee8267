"""``figure4``: Figure 4, PKS weight maps of test images from ViT checkpoints (PNG and CSV).

The maps and the drawing are ``ncil.reports.plots.weight_map_figure``'s (pure); ``verify`` recomputes them
through ``compute``.
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


def compute(p, args: Args, root: str = ".") -> tuple[str, bytes, int]:
    """(CSV text, PNG bytes, number of checkpoints) of the figure ``args`` asks for, reading under ``root``."""
    from pathlib import Path

    from ncil.pipeline import io
    from ncil.reports import plots
    from ncil.data.arrays import load_split
    from ncil.stages.split import read_split

    split = read_split(Path(root) / args.split)
    test = load_split(p.dataset.name, "test", root=str(root))
    checkpoints = [(path, io.load_checkpoint(Path(root) / path)) for path in args.checkpoints]
    csv_text, png = plots.weight_map_figure(p, split["tasks"], test, checkpoints, args.images, args.p)
    return csv_text, png, len(checkpoints)


def run(args: Args) -> None:
    from ncil.pipeline import io
    from ncil.pipeline.progress import say

    cli.refuse_overlap({"--out-png": args.out_png, "--out-csv": args.out_csv, "--log": args.log},
                          {"--params": args.params, "--split": args.split,
                           **{f"--checkpoints[{i}]": c for i, c in enumerate(args.checkpoints)}})
    p, _ = cli.load_params(args.params)
    csv_text, png, n = compute(p, args)
    io.write_files({args.out_csv: csv_text, args.out_png: png})
    say(f"wrote {args.out_png} and {args.out_csv} ({n} checkpoints)")
