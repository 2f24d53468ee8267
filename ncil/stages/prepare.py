"""``prepare``: the data set's arrays under data/<name>/ and their checksum manifest.

The reading, splitting and writing are ``ncil.data.preparation``'s (the manifest's layout is
``ncil.pipeline.io.write_manifest``'s); this stage checks first that every output can be written.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "prepare"
HELP = "write the data set under data/<name>/ with a checksum manifest"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)


def summary_line(dataset: str, counts: dict) -> str:
    return f"prepared {dataset}: " + ", ".join(f"{k} {v}" for k, v in counts.items())


def run(args: Args) -> None:
    from ncil.data.preparation import prepare
    from ncil.pipeline import io, paths
    from ncil.pipeline.progress import say

    p, _ = cli.load_params(args.params)
    io.ensure_writable(*paths.data_files(p.dataset.name))  # the manifest and every array
    say(summary_line(p.dataset.name, prepare(p.dataset)))
