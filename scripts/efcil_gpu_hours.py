"""Estimated GPU-hours of the exemplar-free benchmark grids (grids/<name>/params.yaml; issue 25).

No ResNet-18 method of these grids has run on a GPU here. The one measured ResNet-18 rate is `pass_resnet18`'s
training step in docs/gpu-baseline.md (one H200, eager, 32x32): 31.0 ms per step of batch 64 with 4
rotations, i.e. 256 rows through the student's forward and backward and the old model's forward. Two readings:

* row-proportional: 31.0 / 256 ms per row of 32x32, a row of another size scaled by the ResNet-18's forward FLOP
  (``resources.forward_flop``: 4x at TinyImageNet's 64 pixels, ~3x at ImageNet-Subset's 224 with its ImageNet stem);
* step-bound (launch-bound, as the ViT step was): 31.0 ms per step whatever its rows (a lower bound off CIFAR-100).

Rows counted: task 0 once per base recipe, base split and seed (base_epochs x images, x 4 with rotations); every
task t >= 1 epochs x images (x 4 for PASS's rotations); FeCAM's tasks t >= 1 one forward pass (a third of a row);
AdaGauss's adapter epochs // 2 over the task's images through two frozen networks (two thirds of a row). Images per
class: ``resources.IMAGES_PER_CLASS``. Left out: evaluation, EFC++'s re-balancing and ADC's attacks (features or a
few samples per class), data loading.

    python scripts/efcil_gpu_hours.py [cifar100_efcil | tinyimagenet_efcil | imagenet_subset_efcil ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MS_PER_STEP = 31.0  # pass_resnet18, H200, eager, batch 64 x 4 rotations (gpu-baseline.md)
ROWS_PER_STEP = 256
GRIDS = ("cifar100_efcil", "tinyimagenet_efcil", "imagenet_subset_efcil")


def main(argv: list[str]) -> int:
    for grid in argv or GRIDS:
        if grid not in GRIDS:
            print(f"efcil_gpu_hours: unknown grid {grid!r}; expected one of {', '.join(GRIDS)}", file=sys.stderr)
            return 2
        estimate(grid)
    return 0


def estimate(grid: str) -> None:
    from ncil.data.scenario import task_sizes
    from ncil.pipeline import io, resources
    from ncil.pipeline.config import parse_params

    p = parse_params(io.read_yaml(ROOT / "grids" / grid / "params.yaml"))
    per_class = resources.IMAGES_PER_CLASS[p.dataset.name]
    train, seen_base, by_method = p.train, set(), {}
    rows_total = steps_total = 0.0
    for sc in p.scenario.values():
        sizes = task_sizes(p.dataset.n_classes, sc.initial_increment, sc.increment)
        for name, m in p.method.items():
            for seed in p.seeds:
                rows = steps = 0.0
                if (m.base_recipe, sc.initial_increment, seed) not in seen_base:
                    seen_base.add((m.base_recipe, sc.initial_increment, seed))
                    rot = 4 if m.rotation else 1
                    rows += train.base_epochs * sizes[0] * per_class * rot
                    steps += train.base_epochs * -(-sizes[0] * per_class // train.batch_size)
                for classes in sizes[1:]:
                    images = classes * per_class
                    if m.classifier == "fecam":
                        rows += images / 3
                        continue
                    rot = 4 if (m.rotation and not m.efc) else 1  # EFC rotates on task 0 only
                    rows += train.epochs * images * rot
                    steps += train.epochs * -(-images // train.batch_size)
                    if m.adagauss:
                        rows += (train.epochs // 2) * images * 2 / 3
                        steps += (train.epochs // 2) * (images // train.batch_size)
                rows *= resources.forward_flop(p, m) / resources.RESNET18_FLOP_32  # a 32x32 row's cost = 1
                by_method[name] = by_method.get(name, 0.0) + rows
                rows_total += rows
                steps_total += steps
    hours = lambda rows: rows * MS_PER_STEP / ROWS_PER_STEP / 1e3 / 3600
    for name, rows in by_method.items():
        print(f"{name:14s} {hours(rows):6.1f} GPU-hours (row-proportional; a shared task 0 counts for its first method)")
    print(f"{grid}: {len(p.scenario)} settings x {len(p.method)} methods x {len(p.seeds)} seeds: "
          f"{hours(rows_total):.1f} GPU-hours row-proportional, {steps_total * MS_PER_STEP / 1e3 / 3600:.1f} step-bound")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
