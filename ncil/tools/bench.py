"""``bench``: time one training step of a method against its backbone floor; with ``--resume-state``,
the size and save time of a training task's resumable state (ncil.learning.resume) against one epoch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

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
    resume_state: bool
    saves: int
    images: int
    classes: int
    tasks: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_log(parser)
    parser.add_argument("--method", default="ours")
    parser.add_argument("--batch-size", type=int, default=0, help="images per step (default: train.batch_size)")
    parser.add_argument("--steps", type=int, default=20, help="timed rounds, each one step and one floor (default 20)")
    parser.add_argument("--paper-size", action="store_true", help="the paper's ViT on 32x32 RGB inputs")
    parser.add_argument("-o", "--override", action="append", default=[], help="Hydra override (repeatable)")
    parser.add_argument("--resume-state", action="store_true",
                        help="instead: the resumable state's size and seconds per save, as a %% of one epoch")
    parser.add_argument("--saves", type=int, default=5, help="timed saves of the state (default 5)")
    parser.add_argument("--images", type=int, default=50000,
                        help="training images per epoch for the %% (default 50000, CIFAR-100's training set)")
    parser.add_argument("--classes", type=int, default=100,
                        help="head size of the state; with --tasks, the classes shared by the tasks (default 100)")
    parser.add_argument("--tasks", type=int, default=0,
                        help="DyTox methods: time the step of task T (T task tokens, --classes split evenly over "
                             "the T tasks; default: an incremental task of 4 old and 2 new classes)")


def run(args: Args) -> None:
    from ncil.learning import numerics
    from ncil.pipeline.config import parse_params
    from ncil.pipeline.hydra_conf import compose
    from ncil.pipeline.progress import say

    overrides = list(args.override) + (PAPER_SIZE if args.paper_size else [])
    p = parse_params(compose([f"method=[{args.method}]", *overrides]), source=f"conf/ with {overrides}")
    # bench has no --params for the CLI to read the mode from before torch loads (ncil.cli._prepare_job):
    # set it here, from the composed config, or `-o runtime.numerics=portable` would time native kernels.
    numerics.apply(p.runtime.numerics)
    from ncil.learning.step_timing import bench_step
    if args.resume_state:
        return run_resume_state(p, args)
    method = p.method[args.method]
    batch = args.batch_size or p.train.batch_size
    if args.tasks:
        if method.backbone != "dytox":
            raise cli.UsageError(f"--tasks: only for a DyTox method (backbone dytox), {args.method} has {method.backbone}")
        if not 2 <= args.tasks <= args.classes:
            raise cli.UsageError(f"--tasks: expected 2 to --classes ({args.classes}) tasks, got {args.tasks}")
        from ncil.learning.step_timing import bench_dytox_step
        result = bench_dytox_step(p, method, batch, even_split(args.classes, args.tasks), args.steps)
    else:
        result = bench_step(p, method, batch, args.steps)
    static = " (static shapes)" if result.get("static_shapes") else ""
    static += f" in task {result['tasks']}" if "tasks" in result else ""
    static += f" ({result['task']})" if "task" in result else ""
    say(
        f"{args.method}{static}: {result['rows']} rows/step ({result['parameters']:,} {'network' if 'tasks' in result else 'backbone'} parameters, "
        f"{result['threads']} thread(s), {p.runtime.numerics} numerics, {args.steps} alternating rounds): fastest step {result['step_ms']:.1f} ms, "
        f"fastest floor {result['floor_ms']:.1f} ms ({result['floor_passes']}), ratio {result['ratio']:.3f}; "
        f"medians {result['step_median_ms']:.1f} / {result['floor_median_ms']:.1f} ms, ratio {result['median_ratio']:.3f}; "
        f"{result['images_per_s']:.0f} images/s"
    )


def even_split(classes: int, tasks: int) -> list[int]:
    """``classes`` over ``tasks`` tasks as evenly as possible, the first tasks taking the remainder (pure):
    100 over 10 -> 10 x 10; 100 over 20 -> 20 x 5; 10 over 4 -> [3, 3, 2, 2]."""
    base, extra = divmod(classes, tasks)
    return [base + (i < extra) for i in range(tasks)]


def bench_state_save(p, method, classes: int, saves: int, folder, seed: int = 0) -> dict:
    """Bytes of a resumable state at the end of an epoch and seconds per save (capture + encode + write).

    The state is what ``train`` saves: the network with a ``classes``-class head, Adam after one step
    (both moments filled), every random stream, the history; written through ``ncil.learning.resume.save`` into
    ``folder`` (atomic, as in training). Fastest and median save over ``saves`` rounds.
    """
    import statistics
    import time
    from pathlib import Path

    import torch

    from ncil.learning import optim, resume, runtime
    from ncil.methods.objective import rotations
    from ncil.models.network import build_network

    device, generator = runtime.setup(p.runtime, seed, 0)
    net = build_network(p.model, p.dataset.channels, rotations(method) * classes, method.backbone).to(device)
    optimizer, scheduler = optim.build_optimizer(net.parameters(), optim.task_recipe(p.train, 1))
    for param in net.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()  # Adam's state exists (exp_avg, exp_avg_sq per parameter), as after any epoch
    history = [{"epoch": e + 1, "loss": 1.0, "train_acc": 50.0, "images_per_s": 100.0, "lr": 1e-3} for e in range(400)]
    path = Path(folder) / resume.STATE_NAME
    ident = {"task": 1, "config": {"bench": True}}
    seconds = []
    for _ in range(saves):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        progress = resume.capture(resume.Position(1, 0), net, optimizer, scheduler, generator, generator.get_state(),
                                  device, None, history, {"steps_per_epoch": 782})
        resume.save(path, ident, progress)
        seconds.append(time.perf_counter() - start)
    size = path.stat().st_size
    path.unlink()
    return {"bytes": size, "save_s": min(seconds), "save_median_s": statistics.median(seconds),
            "parameters": sum(q.numel() for q in net.parameters()), "device": device.type}


def run_resume_state(p, args: Args) -> None:
    import tempfile

    from ncil.learning.step_timing import bench_step
    from ncil.pipeline.progress import say

    method = p.method[args.method]
    batch = args.batch_size or p.train.batch_size
    step = bench_step(p, method, batch, args.steps, warmup=1)
    with tempfile.TemporaryDirectory(prefix="ncil-bench-state-") as folder:
        save = bench_state_save(p, method, args.classes, args.saves, folder)
    steps = -(-args.images // batch)
    epoch_s = steps * step["step_ms"] / 1e3
    say(
        f"resumable state of {args.method}: {save['bytes'] / 1e6:.1f} MB ({save['parameters']:,} parameters, "
        f"{args.classes}-class head, Adam moments), save {save['save_s']:.3f} s fastest / "
        f"{save['save_median_s']:.3f} s median of {args.saves} on {save['device']}; one epoch = {steps} steps of "
        f"{batch} images at {step['step_ms']:.1f} ms/step ({p.runtime.threads} thread(s), fastest of "
        f"{args.steps}) = {epoch_s:.1f} s; a save per epoch costs {100 * save['save_s'] / epoch_s:.3g}% of an epoch "
        f"(median {100 * save['save_median_s'] / epoch_s:.3g}%)"
    )
