"""``paper-tables``: the paper's Tables 1, 2, 3, 5 (Markdown and CSV) in results/tables/, assembled from
every data set's section files (``paper-sections``; results/tables/<dataset>/table1.md, ...), and Table 4
(DyTox, results/tables/table4.{md,csv}: the paper's values, ours from the committed results tables of the
Table 4 grids named by ``--table4-grids``) and the exemplar-free benchmark table (issue 25,
results/tables/efcil_benchmark.{md,csv}): the quoted values with ours "not run"
(``ncil.reports.report.unsectioned_texts``).

Section lines and CSV rows are copied unchanged, so adding a data set changes no other data set's
lines (issue 10, item 8); the assembly is ``ncil.reports.report.assemble_texts``'s (pure).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ncil import cli

VERB = "paper-tables"
HELP = ("the paper's Tables 1, 2, 3, 5 (Markdown and CSV) in results/tables/, from every data set's sections, "
        "Table 4 (DyTox; ours from the Table 4 grids' results tables) and the EFCIL benchmark table")


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    sections: tuple[str, ...]
    table4_grids: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--sections", nargs="+", required=True,
                        help="section files results/tables/<dataset>/table{1,2,3,5}.{md,csv} of every data set to show")
    from ncil.pipeline.paths import TABLE4_GRIDS

    parser.add_argument("--table4-grids", nargs="*", default=(), choices=TABLE4_GRIDS, metavar="GRID",
                        help="Table 4 grids whose committed params file and results table fill Table 4's cells of "
                             f"ours (of {', '.join(TABLE4_GRIDS)}; default none: ours \"not run\")")


def read_sections(files: tuple[str, ...]) -> dict[str, str]:
    """Path -> text of the section files named; a missing one names its file and its writer."""
    from pathlib import Path

    from ncil.pipeline.io import ArtifactError

    out = {}
    for path in files:
        if not Path(path).is_file():
            raise ArtifactError(f"--sections {path}: section file not found (written by that data set's "
                                "`python -m ncil paper-sections` step)")
        out[path] = Path(path).read_text(encoding="utf-8")
    return out


def run(args: Args) -> None:
    from ncil.pipeline import io, paths
    from ncil.pipeline.progress import say
    from ncil.reports import report

    _, raw = cli.load_params(args.params)
    try:
        texts = report.assemble_texts(read_sections(args.sections), report.default_context(raw))
    except ValueError as err:  # a section file that is not one, or a data set's sections incomplete
        raise cli.UsageError(f"--sections: {err}") from None
    try:
        grids = report.table4_grids(".", list(args.table4_grids))
    except ValueError as err:  # a missing or malformed results table or params file of a named grid
        raise cli.UsageError(f"--table4-grids: {err}") from None
    texts.update(report.unsectioned_texts(grids))  # Table 4 (the Table 4 grids' results), the EFCIL table
    inputs = [f for g in args.table4_grids for f in (paths.grid_params(g), paths.table_files(g)[1])]
    cli.refuse_overlap({f"table {p}": p for p in texts} | {"--log": args.log},
                       {"--params": args.params, **{f"--sections[{i}]": s for i, s in enumerate(args.sections)},
                        **{f"--table4-grids input {f}": f for f in inputs}})
    io.write_files(texts)  # as a set: a kill leaves files missing, never old and new side by side
    for path in texts:
        say(f"wrote {path}")
