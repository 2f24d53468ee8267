"""The CLI as a table of stage modules: the table, the parser and the workflow's steps agree; every
verb writes the log its step declares, with a failure's traceback in it; the package imports from
any folder once installed."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import yaml

from ncil.cli import STAGES, TOOLS, VERBS, build_parser, main
from tests.conftest import ROOT, env, ncil

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _subcommands(parser) -> dict:
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_workflow_step_runs_a_stage_verb_its_parser_accepts():
    from ncil.pipeline.workflow import steps

    parser = build_parser()
    all_steps = steps(PARAMS)
    assert {s.kind for s in all_steps} >= {"prepare", "split", "train", "evaluate", "summarize", "tables",
                                           "paper_sections", "paper_tables", "figures"}
    for step in all_steps:
        verb = step.cmd[0]
        assert verb in STAGES, f"{step.name}: {verb} is not a stage verb"
        assert STAGES[verb] == f"ncil.stages.{step.kind}", step.name
        args = parser.parse_args(list(step.cmd))  # every flag the workflow passes exists
        assert args.module == STAGES[verb]
        assert args.log == step.log, f"{step.name}: the command logs to {args.log}, the step declares {step.log}"


def test_the_table_the_parser_and_the_modules_agree():
    assert set(STAGES).isdisjoint(TOOLS) and VERBS == {**STAGES, **TOOLS}
    sub = _subcommands(build_parser())
    assert set(sub) == set(VERBS)
    for verb, module_name in VERBS.items():
        module = importlib.import_module(module_name)
        assert callable(module.run) and callable(module.add_arguments) and module.HELP
        assert module.VERB == verb
        assert dataclasses.is_dataclass(module.Args) and module.Args.__dataclass_params__.frozen
        dests = {a.dest for a in sub[verb]._actions if a.dest not in ("help", "module")}
        assert dests == {f.name for f in dataclasses.fields(module.Args)}, verb
        assert "log" in dests, f"{verb} takes no --log"


def _ncil_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ncil"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("ncil"))
    return names


def test_a_step_reads_back_the_values_of_its_flags():
    """verify recomputes Figure 4 from the figure4 step's own flags (Step.values)."""
    from ncil.pipeline.workflow import steps

    step = next(s for s in steps(PARAMS) if s.kind == "figure4")
    assert step.values("--checkpoints") == [v for k, v in step.deps.items() if k.startswith("checkpoint")]
    assert step.values("--split") == [step.deps["split"]] and step.values("--out-csv") == [step.outs["csv"]]
    assert step.values("--images") == []  # left to the verb's default


def test_no_module_imports_the_command_line():
    """ncil.reports.recompute used to import ncil.__main__ (which imports the verbs): a cycle."""
    for path in (ROOT / "ncil").rglob("*.py"):
        if path.name != "__main__.py":
            assert "ncil.__main__" not in _ncil_imports(path), path


def test_library_code_imports_no_verb_module():
    """Verb modules (ncil/stages, ncil/tools) import the library, never the reverse, and never each other:
    what two verbs share lives in the library (ncil/data, ncil/learning, ncil/pipeline, ncil/reports) or in
    ncil/cli.py, which names the verb modules as strings only."""
    for path in (ROOT / "ncil").rglob("*.py"):
        verbs = {m for m in _ncil_imports(path) if m.startswith(("ncil.stages", "ncil.tools"))}
        assert not verbs, f"{path.relative_to(ROOT)} imports {sorted(verbs)}"


def test_building_the_parser_loads_no_torch():
    """numerics.apply must run before torch loads: no stage or tool module imports it at import time."""
    code = "import sys; from ncil.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# --- logs -----------------------------------------------------------------------------------------


def test_the_split_step_writes_the_log_it_declares(tiny_project, monkeypatch):
    from ncil.pipeline.workflow import steps

    monkeypatch.chdir(tiny_project)
    step = next(s for s in steps(yaml.safe_load(Path("params.yaml").read_text())) if s.kind == "split")
    assert main(list(step.cmd)) == 0
    assert Path(step.outs["split"]).is_file()
    log = Path(step.log).read_text()
    assert "python -m ncil split" in log and step.outs["split"] in log


def test_an_expected_error_is_one_line_on_stderr_and_its_traceback_in_the_log(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    log = Path("logs/deep/split.log")
    log.parent.mkdir(parents=True)
    log.write_text("STALE LINE FROM AN EARLIER RUN\n")
    assert main(["split", "--params", "missing.yaml", "--initial", "4", "--out", "s.json", "--log", str(log)]) == 2
    err = capsys.readouterr().err
    assert err == "error: missing.yaml: YAML file not found\n"
    text = log.read_text()
    assert "STALE" not in text and "Traceback (most recent call last)" in text and "YAML file not found" in text
    assert not Path("s.json").exists()


def test_an_unexpected_error_names_its_type_and_the_log(tmp_path, monkeypatch, capsys):
    from ncil.stages import split

    def broken(args):
        raise ZeroDivisionError("division by zero in a stage")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(split, "run", broken)
    assert main(["split", "--initial", "4", "--out", "s.json", "--log", "new/folder/split.log"]) == 1
    err = capsys.readouterr().err
    assert err == "error: ZeroDivisionError: division by zero in a stage (traceback in new/folder/split.log)\n"
    text = Path("new/folder/split.log").read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text


def test_a_log_that_cannot_be_created_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    assert main(["split", "--initial", "4", "--out", "s.json", "--log", "afile/split.log"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --log afile/split.log: cannot write the log here") and err.count("\n") == 1


def test_check_verbs_fail_with_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    Path("dvc.yaml").write_text("stages: {}\n")
    assert main(["dvc-yaml", "--check", "--log", "l.log"]) == 1
    assert capsys.readouterr().err == "error: dvc.yaml is out of date with params.yaml: run `python -m ncil dvc-yaml`\n"
    assert "out of date" in Path("l.log").read_text()


# --- install ----------------------------------------------------------------------------------------


def test_the_installed_package_imports_from_any_folder(tmp_path):
    """What the Makefile's `pip install --no-deps --editable .` gives: ncil, its public API (docs/workflow.md) and
    its conf/ tree from outside the repository (the copy stands in for a clone)."""
    import shutil

    src = tmp_path / "clone"
    shutil.copytree(ROOT / "ncil", src / "ncil", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", src / "conf")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # --ignore-installed: without it pip first uninstalls the ncil of the environment running the tests (the
    # Makefile's editable install), whatever --prefix says.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--ignore-installed", "--prefix", str(venv), "--editable", str(src)], check=True, env=env())
    code = ("import numpy as np, ncil, ncil.reports.metrics\n"
            "from ncil.methods.pks import pks_loss\n"
            "from ncil.methods.prototypes import offset_loss, restore_prototypes\n"
            "from ncil.pipeline.hydra_conf import compose\n"
            "s = ncil.reports.metrics.summarize(np.array([[90.0, np.nan], [70.0, 80.0]]), [10, 10])\n"
            "print(ncil.__file__, s['avg_accuracy'], compose([])['dataset']['name'])\n")
    # numpy, torch, hydra of this environment, after the new venv's own site-packages: a path line in a .pth file
    # (on PYTHONPATH, this environment's own editable ncil finder, same module name, would shadow the new venv's).
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    (venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / "zz_deps.pth").write_text(
        deps + "\n")
    elsewhere = tmp_path / "notebook"
    elsewhere.mkdir()
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=elsewhere, capture_output=True, text=True,
                          env={k: v for k, v in env().items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(src / "ncil" / "__init__.py"), "82.5", "digits"]


def test_paper_tables_from_sections_keep_every_committed_byte_and_add_another_data_set(tmp_path):
    """paper-sections writes one data set's section files; paper-tables assembles the tables from the
    sections named: the committed digits sections give the committed tables byte for byte, and a
    second data set's sections add to them without changing a digits line (issue 10, item 8)."""
    import shutil

    from ncil.pipeline import paths

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "ncil", tmp_path / "ncil", ignore=shutil.ignore_patterns("__pycache__"))
    for path in paths.paper_sections("digits"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    ncil(["paper-tables", "--sections", *paths.paper_sections("digits")], tmp_path)
    tables = [f for t in paths.PAPER_TABLES for f in paths.paper_table_files(t)]
    for path in tables:
        assert (tmp_path / path).read_bytes() == (ROOT / path).read_bytes(), path
    for path in paths.paper_sections("digits"):  # a copy named "folder" stands for a second grid
        other = path.replace("/digits/", "/folder/")
        (tmp_path / other).parent.mkdir(parents=True, exist_ok=True)
        text = (ROOT / path).read_text().replace("## digits", "## folder").replace("digits,", "folder,")
        (tmp_path / other).write_text(text)
    ncil(["paper-tables", "--sections", *paths.paper_sections("digits"), *paths.paper_sections("folder")], tmp_path)
    for path in paths.paper_sections("digits"):
        assert (tmp_path / path).read_bytes() == (ROOT / path).read_bytes(), path
    table1 = (tmp_path / paths.paper_table_files("table1")[0]).read_text()
    assert "## folder" in table1
    committed = (ROOT / paths.paper_table_files("table1")[0]).read_text()
    digits_lines = [line for line in committed.splitlines() if line.startswith("|")]
    assert all(line in table1.splitlines() for line in digits_lines)


def test_paper_tables_refuses_an_incomplete_set_of_sections(tmp_path):
    import shutil

    from ncil.pipeline import paths

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "ncil", tmp_path / "ncil", ignore=shutil.ignore_patterns("__pycache__"))
    files = paths.paper_sections("digits")
    for path in files:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    proc = ncil(["paper-tables", "--sections", *files[:-1]], tmp_path, check=False)
    assert proc.returncode == 2
    assert files[-1] in proc.stderr and "missing" in proc.stderr
    assert not (tmp_path / paths.paper_table_files("table1")[0]).exists()  # nothing written
    (tmp_path / files[0]).unlink()
    proc = ncil(["paper-tables", "--sections", *files], tmp_path, check=False)
    assert proc.returncode == 2 and f"--sections {files[0]}: section file not found" in proc.stderr
