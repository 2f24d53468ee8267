"""``bench-data``: images/s of the batched augmentation against a per-image torchvision + PIL pipeline."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "bench-data"
HELP = "images/s of the batched augmentation against a per-image torchvision + PIL pipeline (CPU)"


@dataclass(frozen=True)
class Args:
    log: str | None
    batch_size: int
    images: int
    pil_images: int
    rounds: int
    threads: int
    brightness: float
    contrast: float
    saturation: float
    hue: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_log(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64, the paper's)")
    parser.add_argument("--images", type=int, default=4096, help="images per round, batched path (default 4096)")
    parser.add_argument("--pil-images", type=int, default=512, help="images per round, per-image path (default 512)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one loader worker's worth)")
    parser.add_argument("--brightness", type=float, default=63 / 255, help="ColorJitter brightness (default 63/255)")
    parser.add_argument("--contrast", type=float, default=0.0)
    parser.add_argument("--saturation", type=float, default=0.0)
    parser.add_argument("--hue", type=float, default=0.0)


def run(args: Args) -> None:
    from ncil.learning.step_timing import bench_augment
    from ncil.pipeline.progress import say

    jitter = (args.brightness, args.contrast, args.saturation, args.hue)
    r = bench_augment(args.batch_size, args.images, args.pil_images, args.rounds, args.threads, jitter=jitter)
    say(
        f"CIFAR training view (crop 32 pad 4, flip, colour jitter {jitter}, normalise) on 32x32x3 uint8 images, "
        f"batch {r['batch_size']}, {r['threads']} thread(s), fastest of {r['rounds']} alternating rounds:\n"
        f"  batched (ncil.data.augment):      {r['batched_images_per_s']:10,.0f} images/s "
        f"(median {r['batched_median_images_per_s']:,.0f})\n"
        f"  per image (torchvision v1 + PIL): {r['pil_images_per_s']:10,.0f} images/s "
        f"(median {r['pil_median_images_per_s']:,.0f})\n"
        f"  ratio {r['ratio']:.1f}x"
    )
