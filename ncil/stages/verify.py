"""``verify``: recompute every number in results/ and fail at the first mismatch.

The checks are ``ncil.reports.recompute``'s; a mismatch exits 1 with ``verify: MISMATCH <file: row, column:
expected, found>`` on stderr.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "verify"
HELP = "recompute every number in results/ and fail at the first mismatch"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    root: str
    refresh_readme: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--root", default=".", help="project folder holding results/ (default .)")
    parser.add_argument("--refresh-readme", action="store_true",
                        help="first rewrite README.md's table blocks from results/tables (after a regeneration)")


def run(args: Args) -> None:
    import os
    from pathlib import Path

    from ncil.pipeline.progress import say
    from ncil.reports.recompute import Mismatch, refresh_readme, verify

    if args.refresh_readme:
        changed = refresh_readme(Path(args.root) / "README.md", Path(args.root))
        say(f"verify: README.md table blocks {'rewritten from results/tables' if changed else 'already current'}")
    _, raw = cli.load_params(args.params)
    try:  # dvc.lock names the params file relative to the project folder
        verify(args.root, raw, log=say, params_file=os.path.relpath(args.params, args.root))
    except Mismatch as err:
        raise cli.CheckFailed(f"verify: MISMATCH {err}") from err
    say("verify: every reported number matches its recomputation")
