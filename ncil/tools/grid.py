"""``grid``: compose a paper data set's grid into grids/<name>/{params,dvc}.yaml (or check them)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "grid"
HELP = "compose a paper data set's grid into grids/<name>/{params,dvc}.yaml"


@dataclass(frozen=True)
class Args:
    log: str | None
    name: str | None
    override: tuple[str, ...]
    check: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ncil.pipeline import paths

    cli.add_log(parser)
    parser.add_argument("name", nargs="?", choices=(*paths.GRID_NAMES, *paths.EXTRA_GRID_NAMES),
                        help="a paper data set's grid, or a grid in its own folder (params.yaml only): digits_dytox "
                             "and cifar100_dytox (Table 4's DyTox methods), digits_efcil (issue 25's exemplar-free "
                             "methods); default: all. A grid whose folder (top-level `grid`, default the data set's "
                             "name) is another grid's is refused")
    parser.add_argument("override", nargs="*", help="Hydra overrides after +experiment=<name>, e.g. +smoke=cpu")
    parser.add_argument("--check", action="store_true", help="fail if a grid file differs from conf/ instead of writing")


def stale_files(names: list[str], overrides: list[str]) -> list[str]:
    """The grid files that differ from what conf/ composes (reads the committed files)."""
    from pathlib import Path

    from ncil.pipeline import paths
    from ncil.pipeline.hydra_conf import render_grid

    stale = []
    for name in names:
        _, params_text, dvc_text = render_grid(name, overrides)
        params_file = Path(paths.grid_params(name))
        if not params_file.exists() or params_file.read_text() != params_text:
            stale.append(str(params_file))
        dvc_yaml = Path(paths.grid_dvc_yaml(name))  # written on first use, then committed with its dvc.lock
        if dvc_text and dvc_yaml.exists() and dvc_yaml.read_text() != dvc_text:
            stale.append(str(dvc_yaml))
    return stale


def run(args: Args) -> None:
    from ncil.pipeline import paths
    from ncil.pipeline.experiment_grid import grid_folder
    from ncil.pipeline.hydra_conf import write_grid
    from ncil.pipeline.progress import say

    names = [args.name] if args.name else [*paths.GRID_NAMES, *paths.EXTRA_GRID_NAMES]
    if args.check:
        stale = stale_files(names, list(args.override))
        if stale:
            raise cli.CheckFailed(f"error: out of date with conf/: {', '.join(stale)}: run `python -m ncil grid`")
        return
    for name in names:
        data = write_grid(name, list(args.override))
        if name in paths.EXTRA_GRID_NAMES:
            say(f"wrote {paths.grid_params(name)}: {len(data['scenario'])} settings x {len(data['method'])} methods x "
                f"{len(data['seeds'])} seeds in runs/{grid_folder(data)}/, results/{grid_folder(data)}/; run: "
                f"python -m ncil params +experiment={name} && snakemake --cores N")
            continue
        say(f"wrote {paths.grid_params(name)} and {paths.grid_dvc_yaml(name)}: {len(data['scenario'])} settings x "
            f"{len(data['method'])} methods x {len(data['seeds'])} seeds; run: snakemake --cores N {name}")
