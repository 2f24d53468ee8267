"""``bench``: time one training step of a method against its backbone floor."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil.stages import common

VERB = "bench"
HELP = "time one training step of a method against its backbone floor"
PAPER_SIZE = ["model=vit_paper", "dataset.image_size=32", "dataset.channels=3",
              "dataset.mean=[0.5071,0.4867,0.4408]", "dataset.std=[0.2675,0.2565,0.2761]"]


@dataclass(frozen=True)
class Args:
    log: str | None
    method: str
    batch_size: int
    steps: int
    paper_size: bool
    override: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_log(parser)
    parser.add_argument("--method", default="ours")
    parser.add_argument("--batch-size", type=int, default=0, help="images per step (default: train.batch_size)")
    parser.add_argument("--steps", type=int, default=20, help="timed rounds, each one step and one floor (default 20)")
    parser.add_argument("--paper-size", action="store_true", help="the paper's ViT on 32x32 RGB inputs")
    parser.add_argument("-o", "--override", action="append", default=[], help="Hydra override (repeatable)")


def run(args: Args) -> None:
    from ncil.bench import bench_step
    from ncil.config import parse_params
    from ncil.hydra_conf import compose
    from ncil.progress import say

    overrides = list(args.override) + (PAPER_SIZE if args.paper_size else [])
    p = parse_params(compose([f"method=[{args.method}]", *overrides]), source=f"conf/ with {overrides}")
    result = bench_step(p, p.method[args.method], args.batch_size or p.train.batch_size, args.steps)
    say(
        f"{args.method}: {result['rows']} rows/step ({result['parameters']:,} backbone parameters, "
        f"{result['threads']} thread(s), {args.steps} alternating rounds): fastest step {result['step_ms']:.1f} ms, "
        f"fastest floor {result['floor_ms']:.1f} ms (student fwd+bwd + old-model fwd), ratio {result['ratio']:.3f}; "
        f"medians {result['step_median_ms']:.1f} / {result['floor_median_ms']:.1f} ms, ratio {result['median_ratio']:.3f}; "
        f"{result['images_per_s']:.0f} images/s"
    )
