"""Command line: ``python -m ncil <verb> ...``. One table maps each verb to its function.

Every Snakemake rule and every DVC stage calls these verbs with named paths, exactly as a person
would; only these functions (through ``ncil.io``) touch disk.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _params(path: str):
    from ncil.config import load_params

    return load_params(path)


def cmd_prepare(args) -> None:
    from ncil.data.prepare import prepare

    p, _ = _params(args.params)
    counts = prepare(p.dataset)
    print(f"prepared {p.dataset.name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def cmd_split(args) -> None:
    from ncil import io
    from ncil.data.scenario import class_order, task_classes

    p, _ = _params(args.params)
    order = class_order(p.dataset.n_classes, p.order_seed)
    tasks = task_classes(order, args.initial, args.increment) if args.increment else [order[: args.initial]]
    io.write_json(
        args.out,
        {
            "dataset": p.dataset.name,
            "order_seed": p.order_seed,
            "class_order": order,
            "initial_increment": args.initial,
            "increment": args.increment,
            "tasks": tasks,
        },
    )


def _read_split(path: str) -> dict:
    from ncil import io

    split = io.read_json(path, "split file")
    for key in ("class_order", "tasks"):
        if key not in split:
            raise io.ArtifactError(f"{path}: {key}: missing from the split file")
    return split


def cmd_train(args) -> None:
    from ncil import io
    from ncil.data.arrays import load_split
    from ncil.progress import get_logger
    from ncil.train import TaskJob, train_task

    p, _ = _params(args.params)
    split = _read_split(args.split)
    if args.task >= len(split["tasks"]):
        raise SystemExit(f"error: --task {args.task}: {args.split} has only {len(split['tasks'])} tasks")
    if args.task == 0:
        recipes = {m.base_recipe: m for m in reversed(p.method.values())}  # validated to agree per recipe
        if args.method not in recipes:
            raise SystemExit(f"error: --method {args.method}: task 0 takes a base recipe ({sorted(recipes)})")
        method = recipes[args.method]
    else:
        if args.method not in p.method:
            raise SystemExit(f"error: --method {args.method}: not in {args.params} (methods: {sorted(p.method)})")
        method = p.method[args.method]
        if not (args.prev_checkpoint and args.prev_centers):
            raise SystemExit("error: tasks after the first need --prev-checkpoint and --prev-centers")
    logger = get_logger(args.log)
    logger.info("train %s task %d (method %s, seed %d)", args.split, args.task, args.method, args.seed)
    job = TaskJob(
        task=args.task,
        seed=args.seed,
        class_order=split["class_order"],
        tasks=split["tasks"],
        method_name=args.method,
        method=method,
        identity={"dataset": p.dataset.name, "split": str(Path(args.split).parent.name), "method": args.method,
                  "seed": args.seed, "task": args.task},
    )
    previous = io.load_checkpoint(args.prev_checkpoint, args.prev_centers) if args.task else None
    previous_centers = io.read_centers(args.prev_centers) if args.task else None
    if previous is not None and previous["task"] != args.task - 1:
        raise io.ArtifactError(f"{args.prev_checkpoint}: task: expected {args.task - 1}, found {previous['task']}")
    train_data = load_split(p.dataset.name, "train")
    payload, centers = train_task(p, job, train_data, previous, previous_centers, logger)
    # The checkpoint goes last and records the centers' hash: a job killed between the two writes
    # leaves no checkpoint, so the pair never looks complete with one old and one new file.
    Path(args.checkpoint).unlink(missing_ok=True)
    io.write_centers(args.centers, centers, task=args.task, feature_dim=centers["center"].shape[1])
    io.save_checkpoint(args.checkpoint, payload, centers_file=args.centers)
    logger.info("wrote %s and %s", args.checkpoint, args.centers)


def cmd_evaluate(args) -> None:
    from ncil import io
    from ncil.data.arrays import load_split
    from ncil.evaluate import evaluate_checkpoint
    from ncil.progress import get_logger

    if len(args.checkpoints) != len(args.out):
        raise SystemExit("error: --checkpoints and --out need the same number of paths")
    p, _ = _params(args.params)
    split = _read_split(args.split)
    logger = get_logger(args.log)
    test = load_split(p.dataset.name, args.data_split)
    for task, (ckpt_path, out) in enumerate(zip(args.checkpoints, args.out)):
        ckpt = io.load_checkpoint(ckpt_path)
        if ckpt["task"] != task:
            raise io.ArtifactError(f"{ckpt_path}: task: expected {task}, found {ckpt['task']}")
        columns = evaluate_checkpoint(p, ckpt, test, split["tasks"])
        io.write_predictions(out, columns, task=task)
        acc = 100.0 * (columns["prediction"] == columns["label"]).mean()
        logger.info("task %d: %d test images, accuracy %.2f%% -> %s", task, len(columns["label"]), acc, out)


def cmd_summarize(args) -> None:
    from ncil import io, metrics
    from ncil.provenance import code_version, setting_label

    p, _ = _params(args.params)
    split = _read_split(args.split)
    evaluations = [io.read_predictions(path) for path in args.evals]
    for task, (path, ev) in enumerate(zip(args.evals, evaluations)):
        if ev["task"] != task:
            raise io.ArtifactError(f"{path}: ncil.task: expected {task}, found {ev['task']}")
    acc, counts = metrics.accuracy_matrix(evaluations)
    summary = metrics.summarize(acc, counts)
    n_tasks = len(split["tasks"])
    result = {
        "run": {"dataset": p.dataset.name, "setting": args.setting, "method": args.method, "seed": args.seed,
                "label": setting_label(split["initial_increment"], split["increment"], n_tasks)},
        "provenance": {"preset": p.preset, "metric_convention": metrics.CONVENTION, "order_seed": p.order_seed,
                       "seed": args.seed, "code_version": code_version(), "class_order": split["class_order"]},
        "acc_matrix": [[None if v != v else float(v) for v in row] for row in acc],
        "test_counts": [int(c) for c in counts],
        **summary,
        # Other systems' conventions, under their own names (metrics.md); the tables never use them.
        "variants": metrics.variants(acc, counts, [len(t) for t in split["tasks"]]),
    }
    io.write_json(args.out, result)


def cmd_tables(args) -> None:
    from ncil import io, tables
    from ncil.metrics import CONVENTION

    p, _ = _params(args.params)
    metrics = [io.read_json(path, "metrics file") for path in args.metrics]
    rows = tables.aggregate(metrics)
    context = {"preset": p.preset, "convention": CONVENTION, "order_seed": p.order_seed, "seeds": list(p.seeds)}
    io.write_text(args.markdown, tables.to_markdown(rows, p.dataset.name, context))
    io.write_text(args.csv, tables.to_csv(rows))


def _load_metrics(files: list[str]) -> list[dict]:
    from ncil import io

    return [io.read_json(path, "metrics file") for path in files]


def cmd_paper_tables(args) -> None:
    from ncil import io, report

    _, raw = _params(args.params)
    for path, text in report.table_texts(raw, _load_metrics(args.metrics)).items():
        io.write_text(path, text)
        print(f"wrote {path}")


def cmd_figures(args) -> None:
    from ncil import figures, io, report

    _, raw = _params(args.params)
    for png, (title, table) in report.curve_tables(raw, _load_metrics(args.metrics)).items():
        io.write_text(png[: -len(".png")] + ".csv", figures.table_to_csv(table))
        io.write_bytes(png, figures.png_bytes(figures.draw_curves(table, title)))
        print(f"wrote {png} ({len(figures.curve_methods(table))} of {len(figures.curve_methods(table, False))} methods with results)")


def cmd_figure4(args) -> None:
    from ncil import figures, io
    from ncil.data.arrays import load_split

    p, _ = _params(args.params)
    split = _read_split(args.split)
    test = load_split(p.dataset.name, "test")
    checkpoints = [(path, io.load_checkpoint(path)) for path in args.checkpoints]
    csv_text, png = figures.weight_map_figure(p, split["tasks"], test, checkpoints, args.images, args.p)
    io.write_text(args.out_csv, csv_text)
    io.write_bytes(args.out_png, png)
    print(f"wrote {args.out_png} and {args.out_csv} ({len(checkpoints)} checkpoints)")


def cmd_verify(args) -> None:
    from ncil.verify import Mismatch, refresh_readme, verify

    if args.refresh_readme:
        changed = refresh_readme(Path(args.root) / "README.md", Path(args.root))
        print(f"verify: README.md table blocks {'rewritten from results/tables' if changed else 'already current'}")

    _, raw = _params(args.params)
    try:
        verify(args.root, raw)
    except Mismatch as err:
        print(f"verify: MISMATCH {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print("verify: every reported number matches its recomputation")


def cmd_costs(args) -> None:
    from ncil import costs, io, paths
    from ncil.provenance import setting_label

    _, raw = _params(args.params)
    records, missing = [], 0
    for run, task, bench in costs.run_benchmarks(raw):
        path = Path(args.root) / bench
        if not path.is_file():
            missing += 1
            continue
        records.append({"label": setting_label(run.initial, run.increment, run.n_tasks), "method": run.method,
                        "seed": run.seed, "task": task, **costs.read_benchmark(path.read_text(), str(path))})
    rows = costs.cost_rows(records)
    dataset = raw["dataset"]["name"]
    out = Path(args.root) / paths.cost_table_file(dataset)
    io.write_text(out.with_suffix(".md"), costs.to_markdown(rows, dataset))
    io.write_text(out.with_suffix(".csv"), costs.to_csv(rows))
    print(f"wrote {out.with_suffix('.md')} ({len(records)} task benchmarks; {missing} not found: run the workflow "
          "with Snakemake to record them)")


def cmd_bench(args) -> None:
    from ncil.bench import bench_step
    from ncil.config import parse_params
    from ncil.hydra_conf import compose

    overrides = list(args.override)
    if args.paper_size:
        overrides += ["model=vit_paper", "dataset.image_size=32", "dataset.channels=3",
                      "dataset.mean=[0.5071,0.4867,0.4408]", "dataset.std=[0.2675,0.2565,0.2761]"]
    p = parse_params(compose([f"method=[{args.method}]", *overrides]), source=f"conf/ with {overrides}")
    result = bench_step(p, p.method[args.method], args.batch_size or p.train.batch_size, args.steps)
    print(
        f"{args.method}: {result['rows']} rows/step ({result['parameters']:,} backbone parameters, "
        f"{result['threads']} thread(s), {args.steps} alternating rounds): fastest step {result['step_ms']:.1f} ms, "
        f"fastest floor {result['floor_ms']:.1f} ms (student fwd+bwd + old-model fwd), ratio {result['ratio']:.3f}; "
        f"medians {result['step_median_ms']:.1f} / {result['floor_median_ms']:.1f} ms, ratio {result['median_ratio']:.3f}; "
        f"{result['images_per_s']:.0f} images/s"
    )


def cmd_bench_data(args) -> None:
    from ncil.bench import bench_augment

    jitter = (args.brightness, args.contrast, args.saturation, args.hue)
    r = bench_augment(args.batch_size, args.images, args.pil_images, args.rounds, args.threads, jitter=jitter)
    print(
        f"CIFAR training view (crop 32 pad 4, flip, colour jitter {jitter}, normalise) on 32x32x3 uint8 images, "
        f"batch {r['batch_size']}, {r['threads']} thread(s), fastest of {r['rounds']} alternating rounds:\n"
        f"  batched (ncil.data.augment):      {r['batched_images_per_s']:10,.0f} images/s "
        f"(median {r['batched_median_images_per_s']:,.0f})\n"
        f"  per image (torchvision v1 + PIL): {r['pil_images_per_s']:10,.0f} images/s "
        f"(median {r['pil_median_images_per_s']:,.0f})\n"
        f"  ratio {r['ratio']:.1f}x"
    )


def cmd_params(args) -> None:
    from ncil.hydra_conf import write_params

    write_params(args.overrides, params_path=args.out, dvc_path=args.dvc_yaml)


def cmd_grid(args) -> None:
    from ncil import paths
    from ncil.hydra_conf import render_grid, write_grid

    names = [args.name] if args.name else list(paths.GRID_NAMES)
    if args.check:
        stale = []
        for name in names:
            _, params_text, dvc_text = render_grid(name, args.override)
            if not Path(paths.grid_params(name)).exists() or Path(paths.grid_params(name)).read_text() != params_text:
                stale.append(paths.grid_params(name))
            dvc_yaml = Path(paths.grid_dvc_yaml(name))  # written on first use, then committed with its dvc.lock
            if dvc_yaml.exists() and dvc_yaml.read_text() != dvc_text:
                stale.append(str(dvc_yaml))
        if stale:
            raise SystemExit(f"error: out of date with conf/: {', '.join(stale)}: run `python -m ncil grid`")
        return
    for name in names:
        data = write_grid(name, args.override)
        print(f"wrote {paths.grid_params(name)} and {paths.grid_dvc_yaml(name)}: {len(data['scenario'])} settings x "
              f"{len(data['method'])} methods x {len(data['seeds'])} seeds; run: snakemake --cores N {name}")


def cmd_dvc_yaml(args) -> None:
    from ncil import io
    from ncil.config import load_params
    from ncil.dvcgen import render_dvc_yaml

    _, raw = load_params(args.params)
    text = render_dvc_yaml(raw, args.params)
    if args.check:
        current = Path(args.out).read_text() if Path(args.out).exists() else ""
        if current != text:
            raise SystemExit(f"error: {args.out} is out of date with {args.params}: run `python -m ncil dvc-yaml`")
        return
    io.write_text(args.out, text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ncil", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)

    def verb(name, func, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(func=func)
        if name not in ("params", "bench", "bench-data", "grid"):
            sp.add_argument("--params", default="params.yaml", help="composed configuration (default params.yaml)")
        if name not in ("params", "dvc-yaml", "bench", "bench-data", "grid"):
            sp.add_argument("--log", help="log file (one line per event; default: stderr only)")
        return sp

    sp = verb("prepare", cmd_prepare, "write the data set under data/<name>/ with a checksum manifest")
    sp = verb("split", cmd_split, "write the class order and the classes of each task")
    sp.add_argument("--initial", type=int, required=True, help="F: classes of the base task")
    sp.add_argument("--increment", type=int, default=0, help="C: classes per later task (0: base task only)")
    sp.add_argument("--out", required=True)

    sp = verb("train", cmd_train, "train one task and write its checkpoint and class centers")
    sp.add_argument("--split", required=True)
    sp.add_argument("--task", type=int, required=True)
    sp.add_argument("--seed", type=int, required=True)
    sp.add_argument("--method", required=True, help="incremental method (task 0: its base recipe)")
    sp.add_argument("--prev-checkpoint")
    sp.add_argument("--prev-centers")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--centers", required=True)

    sp = verb("evaluate", cmd_evaluate, "predict the test images seen after each task")
    sp.add_argument("--split", required=True)
    sp.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints of tasks 0..T-1")
    sp.add_argument("--out", nargs="+", required=True, help="one predictions table per checkpoint")
    sp.add_argument("--data-split", choices=("test", "val"), default="test",
                    help="images to predict: test (reported numbers) or val (carved from train; for tuning)")

    sp = verb("summarize", cmd_summarize, "accuracy matrix, Avg, Last and forgetting of one run")
    sp.add_argument("--split", required=True)
    sp.add_argument("--evals", nargs="+", required=True)
    sp.add_argument("--setting", required=True)
    sp.add_argument("--method", required=True)
    sp.add_argument("--seed", type=int, required=True)
    sp.add_argument("--out", required=True)

    sp = verb("tables", cmd_tables, "results table (mean and std over seeds) of a data set")
    sp.add_argument("--metrics", nargs="+", required=True)
    sp.add_argument("--markdown", required=True)
    sp.add_argument("--csv", required=True)

    sp = verb("paper-tables", cmd_paper_tables, "the paper's Tables 1, 2, 3, 5 (Markdown and CSV) in results/tables/")
    sp.add_argument("--metrics", nargs="*", default=[], help="metrics.json files of the grid (missing runs: 'not run')")

    sp = verb("figures", cmd_figures, "Figure 3: accuracy per task of every setting (PNG and CSV) in results/figures/")
    sp.add_argument("--metrics", nargs="*", default=[], help="metrics.json files of the grid")

    sp = verb("figure4", cmd_figure4, "Figure 4: PKS weight maps of test images from ViT checkpoints (PNG and CSV)")
    sp.add_argument("--split", required=True, help="split.json of the run (the images come from its base task)")
    sp.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints after the tasks to show")
    sp.add_argument("--images", type=int, default=4, help="images to show (one per base-task class; default 4)")
    sp.add_argument("--p", type=int, default=2, choices=(1, 2), help="norm of the CLS-to-patch distance (default 2)")
    sp.add_argument("--out-png", required=True)
    sp.add_argument("--out-csv", required=True)

    sp = verb("verify", cmd_verify, "recompute every number in results/ and fail at the first mismatch")
    sp.add_argument("--root", default=".", help="project folder holding results/ (default .)")
    sp.add_argument("--refresh-readme", action="store_true",
                    help="first rewrite README.md's table blocks from results/tables (after a regeneration)")

    sp = verb("costs", cmd_costs, "wall time and peak memory per setting and method from benchmarks/ (not results/)")
    sp.add_argument("--root", default=".", help="project folder holding benchmarks/ (default .)")

    sp = verb("bench", cmd_bench, "time one training step of a method against its backbone floor")
    sp.add_argument("--method", default="ours")
    sp.add_argument("--batch-size", type=int, default=0, help="images per step (default: train.batch_size)")
    sp.add_argument("--steps", type=int, default=20, help="timed rounds, each one step and one floor (default 20)")
    sp.add_argument("--paper-size", action="store_true", help="the paper's ViT on 32x32 RGB inputs")
    sp.add_argument("-o", "--override", action="append", default=[], help="Hydra override (repeatable)")

    sp = verb("bench-data", cmd_bench_data,
              "images/s of the batched augmentation against a per-image torchvision + PIL pipeline (CPU)")
    sp.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64, the paper's)")
    sp.add_argument("--images", type=int, default=4096, help="images per round, batched path (default 4096)")
    sp.add_argument("--pil-images", type=int, default=512, help="images per round, per-image path (default 512)")
    sp.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (default 5)")
    sp.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one loader worker's worth)")
    sp.add_argument("--brightness", type=float, default=63 / 255, help="ColorJitter brightness (default 63/255)")
    sp.add_argument("--contrast", type=float, default=0.0)
    sp.add_argument("--saturation", type=float, default=0.0)
    sp.add_argument("--hue", type=float, default=0.0)

    sp = verb("params", cmd_params, "compose conf/ with Hydra overrides into params.yaml and regenerate dvc.yaml")
    sp.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.epochs=3 'method=[finetune]'")
    sp.add_argument("--out", default="params.yaml")
    sp.add_argument("--dvc-yaml", default="dvc.yaml")

    sp = verb("grid", cmd_grid, "compose a paper data set's grid into grids/<name>/{params,dvc}.yaml")
    sp.add_argument("name", nargs="?", choices=("cifar100", "tinyimagenet", "imagenet_subset"),
                    help="data set (default: all three)")
    sp.add_argument("override", nargs="*", help="Hydra overrides after +experiment=<name>, e.g. +smoke=cpu")
    sp.add_argument("--check", action="store_true", help="fail if a grid file differs from conf/ instead of writing")

    sp = verb("dvc-yaml", cmd_dvc_yaml, "generate dvc.yaml (one stage per job) from params.yaml")
    sp.add_argument("--out", default="dvc.yaml")
    sp.add_argument("--check", action="store_true", help="fail if the file differs instead of writing it")
    return parser


def main(argv: list[str] | None = None) -> int:
    from ncil.config import ConfigError
    from ncil.io import ArtifactError

    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "params", None):
            from ncil import numerics

            mode = numerics.mode_of_params_file(args.params)
            if mode in ("native", "portable"):  # anything else is refused by the verb's config parser
                numerics.apply(mode)
        args.func(args)
    except (ConfigError, ArtifactError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
