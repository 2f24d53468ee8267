"""``dvc-yaml``: generate dvc.yaml (one stage per job) from params.yaml (or check it)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil.stages import common

VERB = "dvc-yaml"
HELP = "generate dvc.yaml (one stage per job) from params.yaml"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    out: str
    check: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_params(parser)
    common.add_log(parser)
    parser.add_argument("--out", default="dvc.yaml")
    parser.add_argument("--check", action="store_true",
                        help="fail if the file differs instead of writing it, or if runtime.device needs a CUDA GPU "
                             "this machine lacks (DVC's first stage: dvc repro stops before any job)")


def run(args: Args) -> None:
    from pathlib import Path

    from ncil import io
    from ncil.dvcgen import render_dvc_yaml

    p, raw = common.load_params(args.params)
    text = render_dvc_yaml(raw, args.params)
    if args.check:
        from ncil.config import ConfigError
        from ncil.devices import cuda_refusal

        refusal = cuda_refusal(p.runtime.device, args.params)  # DVC runs every stage on this machine
        if refusal:
            raise ConfigError(refusal)
        current = Path(args.out).read_text() if Path(args.out).exists() else ""
        if current != text:
            raise common.CheckFailed(f"error: {args.out} is out of date with {args.params}: run `python -m ncil dvc-yaml`")
        return
    io.write_text(args.out, text)
