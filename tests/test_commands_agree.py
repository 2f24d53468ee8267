"""Snakemake and DVC run the same commands on the same files for the default grid (issue 10, item 2).

The commands are read from what Snakemake itself would run (`snakemake --dry-run --printshellcmds
--forceall` on a copy of the repository) and compared, string for string after normalising
whitespace, with the `cmd:` lines of the committed dvc.yaml; each job's inputs and outputs are
compared with its stage's deps and outs. DVC's first stage, `check_params`, has no Snakemake job:
the Snakefile runs the same validation when it loads.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from ncil.pipeline import paths
from ncil.pipeline.dvcgen import CHECK_STAGE
from tests.conftest import ROOT, copy_project, run


# Rules with no DVC stage: the cost summary reads the benchmark files Snakemake writes (DVC writes none)
# and differs every run, so it is a report item under results/costs/, not a reproduced result.
SNAKEMAKE_ONLY = ("costs",)


def normalise(command: str) -> str:
    return " ".join(command.split())


def dry_run_jobs(output: str) -> list[dict]:
    """The jobs of a `snakemake -n -p` listing: rule, input and output lists, shell command."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not rule:
            continue
        job = {"rule": rule.group(1), "input": [], "output": [], "shell": None}
        for key in ("input", "output"):
            found = re.search(rf"^    {key}: (.*)$", block, re.M)
            # A flagged file is shown with its flag: "results/tables/table1.md (update)".
            job[key] = [re.sub(r" \(\w+\)$", "", f) for f in found.group(1).split(", ")] if found else []
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        if shell and shell.group(1) != "None":
            job["shell"] = normalise(shell.group(1))
        jobs.append(job)
    return jobs


def path_of(entry) -> str:
    return next(iter(entry)) if isinstance(entry, dict) else entry


@pytest.fixture(scope="module")
def default_grid(tmp_path_factory) -> tuple[list[dict], dict]:
    project = copy_project(tmp_path_factory.mktemp("agree") / "p", tiny=False)
    shutil.copytree(ROOT / "grids", project / "grids")  # as in a clone: the paper data sets' grids beside
    for _, _, csv in paths.table4_sources(str(ROOT)):  # and the Table 4 grids' committed results tables
        (project / csv).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / csv, project / csv)
    proc = run([sys.executable, "-m", "snakemake", "--dry-run", "--printshellcmds", "--forceall", "--cores", "2"],
               project)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return dry_run_jobs(proc.stdout), stages


def test_snakemake_runs_exactly_the_commands_of_dvc_yaml(default_grid):
    jobs, stages = default_grid
    snakemake_cmds = [job["shell"] for job in jobs if job["shell"] and job["rule"] not in SNAKEMAKE_ONLY]
    dvc_cmds = [normalise(stage["cmd"]) for name, stage in stages.items() if name != CHECK_STAGE]
    assert len(snakemake_cmds) == len(set(snakemake_cmds)) == 466  # every job its own command, once
    assert [job["rule"] for job in jobs if job["rule"] in SNAKEMAKE_ONLY] == ["costs"]
    assert sorted(snakemake_cmds) == sorted(dvc_cmds)
    # The only jobs without a command are the named targets (here: the default target `all`).
    assert [job["rule"] for job in jobs if not job["shell"]] == ["all"]


def test_each_job_reads_and_writes_what_its_stage_declares(default_grid):
    jobs, stages = default_grid
    by_cmd = {normalise(stage["cmd"]): stage for name, stage in stages.items() if name != CHECK_STAGE}
    for job in jobs:
        if not job["shell"] or job["rule"] in SNAKEMAKE_ONLY:
            continue
        stage = by_cmd[job["shell"]]
        deps = [d for d in stage["deps"] if d != paths.PARAMS_CHECK_STAMP]
        # The code: DVC reads the verb's fingerprint as a param, Snakemake as fingerprints/<verb>.txt (+ a param).
        (verb,) = [entry["fingerprints.yaml"] for entry in stage["params"]
                   if isinstance(entry, dict) and "fingerprints.yaml" in entry][0]
        assert f"fingerprints/{verb}.txt" in job["input"], job["shell"]
        # The params keys: DVC reads them from params.yaml, Snakemake also as one params stamp (.ncil/params/).
        stamps = [i for i in job["input"] if i.startswith(paths.PARAMS_STAMP_ROOT + "/")]
        assert len(stamps) == 1, job
        inputs = [i for i in job["input"] if i != f"fingerprints/{verb}.txt" and i not in stamps]
        assert sorted(inputs) == sorted(deps), job["shell"]
        outs = [path_of(o) for o in stage.get("outs", []) + stage.get("metrics", [])]
        assert sorted(job["output"]) == sorted(outs), job["shell"]


def test_every_stage_but_the_check_depends_on_the_check(default_grid):
    _, stages = default_grid
    assert next(iter(stages)) == CHECK_STAGE
    assert [path_of(o) for o in stages[CHECK_STAGE]["outs"]] == [paths.PARAMS_CHECK_STAMP]
    assert all(stage["deps"][0] == paths.PARAMS_CHECK_STAMP for name, stage in stages.items() if name != CHECK_STAGE)


def test_the_rules_show_their_commands():
    """What a reader sees in rules/: every rule calls `python -m ncil <verb>` with named placeholders."""
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        text = smk.read_text()
        # Named rules, and the rules a loop defines (`rule:` with `name:`, one per grid: the figures).
        bodies = {rule: text.split(f"rule {rule}:", 1)[1].split("\nrule ", 1)[0]
                  for rule in re.findall(r"^\s*rule (\w+):", text, re.M)}
        for n, body in enumerate(re.split(r"^\s*rule:\n", text, flags=re.M)[1:]):
            bodies[f"rule: #{n}"] = re.split(r"^\s*(?:rule|for|if) ", body, maxsplit=1, flags=re.M)[0]
        if smk.name == "report.smk":  # Figure 3 and Figure 4, once per grid
            assert len([r for r in bodies if r.startswith("rule: #")]) == 2
        for rule, body in bodies.items():
            assert "{params.cmd}" not in body, f"{smk.name}: rule {rule}"
            for directive in ("log:", "benchmark:", "shell:", "code=code("):
                assert directive in body, f"{smk.name}: rule {rule} has no {directive}"
            shell = body.split("shell:", 1)[1]
            assert shell.split('"')[1].startswith("python -m ncil "), f"{smk.name}: rule {rule}"
            assert "--log {log}" in shell, f"{smk.name}: rule {rule}"
    assert "def previous_task(wildcards)" in (ROOT / "rules" / "common.smk").read_text()


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory) -> Path:
    """The tiny grid's project, shared by the dry runs below (they plan, never write an output)."""
    return copy_project(tmp_path_factory.mktemp("tiny") / "p")


def test_an_unknown_run_fails_naming_the_grid(tiny_grid):
    """Task t-1 of a run that is not in the grid: the input function names the grid's settings."""
    project = tiny_grid
    proc = run([sys.executable, "-m", "snakemake", "-n", "--cores", "1",
                "runs/digits/base4_inc2/nosuchmethod/seed1/task_2/model.pt"], project, check=False)
    assert proc.returncode != 0
    assert "method='nosuchmethod'" in proc.stdout + proc.stderr


def test_a_base_run_outside_the_grid_is_refused(tiny_grid):
    project = tiny_grid
    proc = run([sys.executable, "-m", "snakemake", "-n", "--cores", "1",
                "runs/digits/base4/plain/seed7/task_0/model.pt"], project, check=False)
    assert proc.returncode != 0
    assert "base4/plain/seed7: not a base run of params.yaml (base runs: base4/plain/seed1)" in proc.stdout + proc.stderr


def test_dry_run_paths_match_the_path_owner():
    """The rules' literal patterns and ncil/pipeline/paths.py agree (the commands test covers the default grid)."""
    text = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    # {grid}: the grid's folder under runs/ and results/ (experiment_grid.grid_folder); {dataset}: data/<dataset>/.
    for template in (paths.checkpoint("{grid}", "{setting}/{method}/seed{seed}", "{task}"),
                     paths.centers("{grid}", "base{initial}/{recipe}/seed{seed}", 0),
                     paths.split_file("{grid}", "{split_id}"),
                     paths.metrics_file("{grid}", "{setting}/{method}/seed{seed}"),
                     paths.table_files("{grid}")[0], paths.data_manifest("{dataset}")):
        assert f'"{template}"' in text, template
    assert Path(paths.PARAMS_CHECK_STAMP).parts[0] == paths.RESULTS_ROOT
