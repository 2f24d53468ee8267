"""The documentation: a short README, one page per topic in docs/, nothing pointing outside the
repository, every link and anchor resolving, every configuration key and command documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ncil.cli import VERBS
from ncil.pipeline import config
from ncil.reports.recompute import README_BLOCK

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
TOPICS = ["workflow", "results", "datasets", "methods", "gpu", "cluster", "configuration", "reproducibility",
          "testing", "layout", "metrics", "method-spec"]

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")  # [text](target), ![alt](target)


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def prose(text: str) -> str:
    """The text without fenced code blocks (their brackets are not links)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text()).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_follows_github():
    assert slug("The released code's preset (`official`)") == "the-released-codes-preset-official"
    assert slug("7. Reference results to regenerate") == "7-reference-results-to-regenerate"
    assert slug("Tuning, on the validation split only") == "tuning-on-the-validation-split-only"
    assert slug("`method.<name>`") == "methodname"


def test_the_readme_is_short_and_keeps_what_a_newcomer_needs():
    text = README.read_text()
    assert len(text.splitlines()) < 250
    for command in ("make reproduce", "make test", "make test-fast", "make verify"):
        assert command in text, command
    blocks = [m.group(1, 2) for m in README_BLOCK.finditer(text)]
    assert blocks == [("table1", "digits")]  # `make verify` checks it, `make lock` rewrites it
    for topic in TOPICS:
        assert f"(docs/{topic}.md)" in text, f"README does not link docs/{topic}.md"


def test_docs_has_one_page_per_topic_and_an_index():
    names = {p.stem for p in DOCS}
    assert set(TOPICS) | {"README"} <= names
    index = (ROOT / "docs" / "README.md").read_text()
    for page in DOCS:
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not list {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_nothing_points_outside_the_repository(page):
    text = page.read_text()
    for bad in ("../shared", "shared/docs", "shared/paper", "/work/", "/home/"):
        assert bad not in text, f"{rel(page)}: {bad!r} points outside the repository"
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert not target.startswith("/"), f"{rel(page)}: absolute link {target}"
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{rel(page)}: {target} leaves the repository"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_and_anchor_resolves(page):
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{rel(page)}: link to missing {target}"
        if anchor:
            assert dest.suffix == ".md", f"{rel(page)}: anchor into a non-Markdown file: {target}"
            assert anchor in anchors(dest), f"{rel(page)}: no heading #{anchor} in {rel(dest)}"


def test_every_configuration_key_is_documented():
    """Each field of the typed parser's sections has a row in docs/configuration.md."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = {key for line in text.splitlines() if line.startswith("| `")
            for key in re.findall(r"`([\w.]+)`", line.split("|")[1])}
    sections = [config.DatasetConfig, config.ModelConfig, config.TrainConfig, config.RuntimeConfig,
                config.ScenarioConfig, config.MethodConfig, config.Params]
    missing = [f"{cls.__name__}.{f.name}" for cls in sections for f in dataclasses.fields(cls) if f.name not in rows]
    assert not missing, f"not in docs/configuration.md: {missing}"


def test_every_configuration_file_is_named_in_the_docs():
    text = "".join(p.read_text() for p in DOCS)
    for group in ("dataset", "model", "train", "runtime", "scenario", "method", "preset", "smoke"):
        for file in sorted((ROOT / "conf" / group).glob("*.yaml")):
            assert f"`{file.stem}`" in text, f"conf/{group}/{file.name} is not named in docs/"


def test_every_documented_command_exists():
    """`make X` names a Makefile target and `python -m ncil VERB` a verb, in the README and every page."""
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"(?:`|^ {4,}|&& )make ([a-z][\w-]*)", text, re.M):
            assert target in targets, f"{rel(page)}: `make {target}` is not a Makefile target"
        for verb in re.findall(r"python -m ncil ([a-z][\w-]*)", text):
            assert verb in VERBS, f"{rel(page)}: `python -m ncil {verb}` is not a verb"


def test_the_readme_test_tiers_are_the_makefiles():
    """`make test` is the whole suite with the 20 slowest tests printed (what .ci/run runs);
    `make test-fast` leaves out the slow, SLURM and GPU markers, as the README says."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = {name: body for name, body in re.findall(r"^([\w-]+):[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)}
    assert "pytest" in recipe["test"] and "--durations=20" in recipe["test"] and '-m "' not in recipe["test"]
    fast = re.search(r'-m "([^"]+)"', recipe["test-fast"]).group(1)
    assert fast == "not slow and not slurm and not gpu"
    assert re.search(r"^make test\b", (ROOT / ".ci" / "run").read_text(), re.M)
    assert "`make test`" in README.read_text() and "`make test-fast`" in README.read_text()
    markers = (ROOT / "pyproject.toml").read_text()
    for marker in ("slow", "slurm", "gpu"):
        assert f'"{marker}:' in markers
