"""A user's own image folder grid in a checkout that holds another grid's committed results (issue 20,
items 2 and 4): Snakemake plans it whole, never deletes a committed table, and sees every change inside
the image folder."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from ncil.pipeline import paths
from tests.conftest import ROOT, copy_project, ncil, run
from tests.data_fixtures import write_folder

SHARED_TABLES = [f for t in (*paths.PAPER_TABLES, *paths.UNSECTIONED_TABLES) for f in paths.paper_table_files(t)]


def snakemake(project: Path, *args: str, check: bool = False):
    return run([sys.executable, "-m", "snakemake", *args], project, check=check)


def folder_grid(project: Path, root: Path) -> None:
    """The issue's image folder grid (10 classes, the paper's ViT shrunk by +smoke=cpu)."""
    ncil(["params", "dataset=folder", f"dataset.root={root}", "dataset.n_classes=10", "model=vit_paper",
          "+smoke=cpu"], project)


# Each test copies the project, composes a grid and runs Snakemake (dry or for real): 20-30 s each.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("images"), [f"c{i}" for i in range(10)], train_per_class=4,
                        test_per_class=2)


@pytest.fixture
def after_digits(tmp_path, images) -> Path:
    """A checkout after the digits grid: its committed tables and digits' sections, the sections newer
    than the tables (as `git checkout -- .` may leave them), then an image folder grid composed."""
    project = copy_project(tmp_path / "p")
    shutil.copytree(ROOT / paths.TABLES_DIR, project / paths.TABLES_DIR)
    shutil.copytree(ROOT / "grids", project / "grids")  # the Table 4 grids' params files beside their results
    for section in paths.paper_sections("digits"):
        os.utime(project / section, None)
    for table in SHARED_TABLES:
        os.utime(project / table, (1_000_000_000, 1_000_000_000))
    folder_grid(project, images)
    return project


def planned(output: str) -> list[str]:
    """The rules of the jobs a dry run plans."""
    return [line.split()[1].rstrip(":") for line in output.splitlines() if line.startswith(("rule ", "localrule "))]


def test_a_folder_grid_after_the_digits_grid_plans_its_own_sections(after_digits):
    """Before: `snakemake -n results/tables/table1.md` stopped with "InputFunctionException in rule
    paper_sections ... data set 'digits'", and a full run scheduled paper_tables without the folder's
    sections (it then failed "Missing files" and deleted the committed tables)."""
    for target in ([], ["results/tables/table1.md"]):
        proc = snakemake(after_digits, "-n", *target)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        rules = planned(proc.stdout)
        assert "paper_tables" in rules and "paper_sections" in rules, out
        assert "wildcards: dataset=folder" in proc.stdout
        assert "dataset=digits" not in proc.stdout  # digits' committed sections are inputs, not jobs


def test_a_failing_paper_tables_job_keeps_the_committed_tables(after_digits):
    """A paper_tables job that fails (here on a broken section file) leaves the committed tables byte for
    byte (before: Snakemake deleted them), and the next run redoes the job (the restored files are
    not passed as up to date)."""
    project = after_digits
    before = {name: (project / name).read_bytes() for name in SHARED_TABLES}
    for section in paths.paper_sections("folder"):
        (project / section).parent.mkdir(parents=True, exist_ok=True)
        (project / section).write_text("not a section\n")
    proc = snakemake(project, "--cores", "1", "--allowed-rules", "paper_tables", "--forcerun", "paper_tables",
                     "--", "results/tables/table1.md")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "paper-tables" in out, out
    assert {name: (project / name).read_bytes() for name in SHARED_TABLES} == before
    again = snakemake(project, "-n", "--allowed-rules", "paper_tables", "--", "results/tables/table1.md")
    assert again.returncode == 0 and planned(again.stdout) == ["paper_tables"], again.stdout + again.stderr


@pytest.fixture
def prepared_folder(tmp_path) -> tuple[Path, Path]:
    """A folder grid whose prepare step Snakemake has run."""
    images = write_folder(tmp_path, [f"c{i}" for i in range(10)], train_per_class=4, test_per_class=2)
    project = copy_project(tmp_path / "p")
    folder_grid(project, images)
    snakemake(project, "--cores", "1", paths.data_manifest("folder"), check=True)
    return project, images


def _replace(image: Path) -> None:
    from PIL import Image

    stat = image.stat()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime (cp -p, rsync -t)


def _add(image: Path) -> None:
    shutil.copy2(image, image.with_name("extra.png"))  # a copy keeps the original's (old) mtime


CHANGES = {"replace": _replace, "add": _add, "delete": Path.unlink}


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_inside_the_image_folder_reruns_prepare(prepared_folder, change):
    """Before: the prepare rule's input was the root folder, compared by its own mtime, which none of
    these changes touch: `snakemake -n` said "Nothing to be done"."""
    project, images = prepared_folder
    target = paths.data_manifest("folder")
    first = snakemake(project, "-n", target)
    assert first.returncode == 0 and "Nothing to be done" in first.stdout, first.stdout + first.stderr
    CHANGES[change](images / "train" / "c3" / "001.png")
    proc = snakemake(project, "-n", target)
    assert proc.returncode == 0 and planned(proc.stdout) == ["prepare"], proc.stdout + proc.stderr
