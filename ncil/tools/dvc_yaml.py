"""``dvc-yaml``: generate dvc.yaml (one stage per job) from params.yaml (or check it).

``--check`` is DVC's first stage (``check_params``, ncil/pipeline/dvcgen.py). In a DVC experiment, DVC's Hydra
integration has already rewritten params.yaml from conf/ and the ``-S`` overrides alone (not from the
overrides the workspace's grid was composed with), so a refusal there puts back the params.yaml that
dvc.yaml was generated from and says how to change that grid instead (issue 20, item 7).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from ncil import cli
from ncil.pipeline.dvcgen import COMPOSED_BY, keep_source, source_copy

VERB = "dvc-yaml"
HELP = "generate dvc.yaml (one stage per job) from params.yaml"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    out: str
    check: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--out", default="dvc.yaml")
    parser.add_argument("--check", action="store_true",
                        help="fail if the file differs instead of writing it, or if runtime.device needs a CUDA GPU "
                             "this machine lacks (DVC's first stage: dvc repro stops before any job)")


def source_of(dvc_text: str, params_path: str, candidates: list[str]) -> str | None:
    """The first candidate params text whose generated dvc.yaml is ``dvc_text`` (pure but for parsing)."""
    import yaml

    from ncil.pipeline.config import ConfigError
    from ncil.pipeline.dvcgen import render_dvc_yaml

    for text in candidates:
        try:
            data = yaml.safe_load(text)
            if isinstance(data, dict) and render_dvc_yaml(data, params_path) == dvc_text:
                return text
        except (yaml.YAMLError, ConfigError, KeyError, TypeError, ValueError):
            continue
    return None


def _committed(params_path: str) -> str | None:
    import subprocess

    proc = subprocess.run(["git", "show", f"HEAD:./{params_path}"], capture_output=True, text=True,
                          cwd=Path(params_path).resolve().parent, check=False)
    return proc.stdout if proc.returncode == 0 else None


def undo_experiment_params(params_path: str, dvc_path: str) -> str | None:
    """In a DVC experiment whose params.yaml DVC composed (no header of ours), put back the params.yaml
    dvc.yaml was generated from (our copy, else the committed one) and return the advice that keeps
    that grid; None outside an experiment or when no such params.yaml is known."""
    from ncil.pipeline import io

    current = Path(params_path).read_text(encoding="utf-8")
    # Ours starts with the header comment of ncil.pipeline.hydra_conf; DVC's Hydra dump has no comment.
    if not os.environ.get("DVC_EXP_BASELINE_REV") or current.startswith("#") or not Path(dvc_path).is_file():
        return None
    copy = source_copy(dvc_path)
    candidates = [copy.read_text(encoding="utf-8") if copy.is_file() else None, _committed(params_path)]
    source = source_of(Path(dvc_path).read_text(encoding="utf-8"), params_path, [c for c in candidates if c])
    if source is None:
        return None
    io.write_text(params_path, source)
    composed = next((line[len(COMPOSED_BY):] for line in source.splitlines() if line.startswith(COMPOSED_BY)), "")
    recompose = f"`python -m ncil params {composed + ' ' if composed else ''}KEY=VALUE`"
    return (f"`dvc exp run` composed {params_path} from conf/ and its -S overrides alone, not from this grid's; "
            f"{params_path} is put back as it was (the grid of {dvc_path}). To change a value of this grid: "
            f"`dvc exp run --no-hydra -S KEY=VALUE`, or {recompose} and `dvc repro`")


def check(args: Args) -> None:
    from ncil.pipeline.config import ConfigError
    from ncil.pipeline.devices import cuda_refusal
    from ncil.pipeline.dvcgen import render_dvc_yaml

    try:
        p, raw = cli.load_params(args.params)
        refusal = cuda_refusal(p.runtime.device, args.params)  # DVC runs every stage on this machine
        if refusal:
            raise ConfigError(refusal)
    except ConfigError as err:
        advice = undo_experiment_params(args.params, args.out)
        if advice:
            raise ConfigError(f"{err}; {advice}") from None
        raise
    from ncil.pipeline import fingerprints
    from ncil.pipeline.workflow import REPO_ROOT

    stale = fingerprints.problem(REPO_ROOT)
    if stale:
        raise cli.CheckFailed(f"error: {stale} (the code changed since it was written)")
    current = Path(args.out).read_text() if Path(args.out).exists() else ""
    if current != render_dvc_yaml(raw, args.params):
        advice = undo_experiment_params(args.params, args.out)
        if advice:
            raise cli.CheckFailed(f"error: {args.out} is not the grid of {args.params}: {advice}")
        raise cli.CheckFailed(f"error: {args.out} is out of date with {args.params}: run `python -m ncil dvc-yaml`")
    keep_source(args.params, args.out)  # the grid that passed: what a later refused experiment puts back


def run(args: Args) -> None:
    from ncil.pipeline import io
    from ncil.pipeline.dvcgen import render_dvc_yaml

    if args.check:
        check(args)
        return
    from ncil.pipeline import fingerprints
    from ncil.pipeline.workflow import REPO_ROOT

    _, raw = cli.load_params(args.params)
    fingerprints.write(REPO_ROOT)
    io.write_text(args.out, render_dvc_yaml(raw, args.params))
    keep_source(args.params, args.out)
