"""`snakemake --report report.html` on the committed results: one self-contained page with Tables 1, 2, 3
and 5, the results table, Figures 3 and 4 and the cost summary, each with its caption (report/*.rst).

The report is built in a copy of the repository (tracked and new, not ignored, files: no data, no
checkpoints, no .snakemake metadata), so it shows what a fresh clone shows. Snakemake 9 needs no
metadata for that (it warns "Missing metadata" and goes on) but every file marked report() must exist.
"""

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ncil.pipeline import paths
from ncil.pipeline.workflow import steps
from ncil.reports import report, results_table

ROOT = Path(__file__).resolve().parents[1]


def _repository_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(the report's HTML, the params of the grid), built once in a copy of the repository."""
    copy = tmp_path_factory.mktemp("repo")
    for rel in _repository_files():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    run = subprocess.run([sys.executable, "-m", "snakemake", "--report", "report.html", "--cores", "1"], cwd=copy,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    html = (copy / "report.html").read_text(encoding="utf-8")
    return html, yaml.safe_load((copy / "params.yaml").read_text())


def _entry(html: str, path: str) -> tuple[str, bytes]:
    """The caption (HTML) and the embedded bytes of the report's entry for ``path``."""
    match = re.search(re.escape(f'"{path}": {{') + r'.*?"caption": "(.*?)", "mime_type".*?"data_uri": '
                      r'"data:[^;]*;charset=utf8;filename=[^;]*;base64,([A-Za-z0-9+/=]*)"', html, re.S)
    assert match, f"{path} is not in the report (is its rule output wrapped in report(...)?)"
    return match.group(1), base64.b64decode(match.group(2))


def _expected_items(params: dict) -> dict[str, str]:
    """Report file -> a title its caption must show (the same words as report/*.rst)."""
    dataset = params["dataset"]["name"]
    items = {paths.paper_table_files(t)[0]: results_table.TABLE_TITLES[t] for t in paths.PAPER_TABLES}
    items[paths.table_files(dataset)[0]] = f"Results on {dataset}"
    for d, setting, _ in report.grid_curves(params):
        items[paths.curve_figure_files(d, setting)[0]] = f"Figure 3: accuracy after each task, {d}"
    if any(s.kind == "figure4" for s in steps(params)):
        items[paths.weight_map_files(dataset)[0]] = f"Figure 4: PKS patch weights, {dataset}"
    items[str(Path(paths.cost_table_file(dataset)).with_suffix(".md"))] = f"What each setting cost on {dataset}"
    return items


@pytest.mark.slow
def test_report_shows_every_table_figure_and_the_costs_with_their_captions(built):
    html, params = built
    items = _expected_items(params)
    assert len([p for p in items if p.startswith(paths.FIGURES_DIR)]) >= 2  # Figures 3 and 4
    for path, title in items.items():
        caption, data = _entry(html, path)
        assert title in caption, f"{path}: caption {caption[:200]!r} lacks the title {title!r}"
        assert "Made by" in caption and "python <span class=\\\"pre\\\">-m</span> ncil" in caption, path
        committed = ROOT / path
        if committed.is_file():  # the page shows the committed bytes (the cost table may be local)
            assert data == committed.read_bytes(), f"{path}: the report embeds other bytes than the committed file"
    # The global description names the grid and the metrics.
    assert f"data set <strong>{params['dataset']['name']}</strong>" in html
    assert "<strong>Avg</strong> is the mean of" in html and "<strong>Last</strong> is" in html


@pytest.mark.slow
def test_report_page_is_self_contained(built):
    html, _ = built
    # No file is linked from outside the page: every result is embedded as a data URI.
    assert not re.search(r'(src|href)="(?!data:|#|javascript:)[^"]+\.(png|md|csv|js|css)"', html)
