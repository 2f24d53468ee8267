"""``params``: compose conf/ with Hydra overrides into params.yaml and regenerate dvc.yaml."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "params"
HELP = "compose conf/ with Hydra overrides into params.yaml and regenerate dvc.yaml"


@dataclass(frozen=True)
class Args:
    log: str | None
    overrides: tuple[str, ...]
    out: str
    dvc_yaml: str | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_log(parser)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.epochs=3 'method=[finetune]'")
    parser.add_argument("--out", default="params.yaml")
    parser.add_argument("--dvc-yaml", default=None,
                        help="the dvc.yaml to generate for it (default: dvc.yaml when --out is params.yaml, "
                             "else none: the repository's pipeline never points at another params file by accident)")


def run(args: Args) -> None:
    from ncil.pipeline.hydra_conf import write_params

    from pathlib import Path

    dvc_path = args.dvc_yaml
    if dvc_path is None and Path(args.out).resolve() == Path("params.yaml").resolve():
        dvc_path = "dvc.yaml"
    write_params(list(args.overrides), params_path=args.out, dvc_path=dvc_path)
