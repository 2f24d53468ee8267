"""Preemption-safe training tasks (ncil.learning.resume; issue 11 item 4): a task stopped by SIGTERM or killed
with SIGKILL, then rerun, ends in the bytes of an uninterrupted run; the state is refused when it
belongs to another configuration or is damaged, survives a kill inside its own write, and is removed
once the task completes. Plus the platform record (ncil.pipeline.provenance) and the save-cost bench."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BASE_SPLIT, BASE_TASK, ROOT, SETTING_SPLIT, copy_project, env, ncil, run
from ncil.data import arrays
from ncil.learning import resume, training
from ncil.pipeline import io, provenance
from ncil.pipeline.config import ConfigError, parse_params
from ncil.pipeline.hydra_conf import compose

# --- Pure parts ---------------------------------------------------------------------------------


def test_first_difference_names_the_nested_field_in_the_expected_order():
    expected = {"task": 1, "job": {"seed": 1, "method": "ours"}, "config": {"train": {"lr": 0.001, "epochs": 3}},
                "tasks": [[0, 1], [2, 3]]}
    assert resume.first_difference(expected, json.loads(json.dumps(expected))) is None
    other_lr = {**expected, "config": {"train": {"lr": 0.002, "epochs": 3}}}
    assert resume.first_difference(expected, other_lr) == ("identity.config.train.lr", 0.001, 0.002)
    both = {**other_lr, "job": {"seed": 2, "method": "ours"}}  # the job comes first in the expected order
    assert resume.first_difference(expected, both) == ("identity.job.seed", 1, 2)
    assert resume.first_difference(expected, {**expected, "tasks": [[0, 1], [2, 4]]}) == ("identity.tasks[1][1]", 3, 4)
    assert resume.first_difference(expected, {**expected, "extra": 1}) == ("identity.extra", "<absent>", 1)
    assert resume.first_difference({"a": 1}, {"a": 1.0}) == ("identity.a", 1, 1.0)  # int vs float differ


def test_positions_read_as_the_log_numbers_epochs():
    assert resume.describe_position(0, 0, 9) == "epoch 1 step 0/9"
    assert resume.describe_position(2, 5, 9) == "epoch 3 step 5/9"  # inside the third epoch
    assert resume.describe_position(3, 0, 9) == "epoch 3 step 9/9"  # the third epoch done
    assert resume.state_path("runs/d/base4/plain/seed1/task_0/model.pt") == Path("runs/d/base4/plain/seed1/task_0/resume.pt")
    assert resume.PREEMPTED_EXIT == 143


def test_check_position_refuses_a_position_outside_the_task(tmp_path):
    good = {"epoch": 3, "step": 0, "counters": {"steps_per_epoch": 9}}
    resume.check_position(tmp_path / "resume.pt", good, epochs=3, steps=9)  # after the last epoch: fine
    with pytest.raises(io.ArtifactError, match=r"resume.pt: progress.counters.steps_per_epoch: expected 8"):
        resume.check_position(tmp_path / "resume.pt", good, epochs=3, steps=8)
    with pytest.raises(io.ArtifactError, match=r"progress.epoch/step: \(3, 4\) is outside the task's 3 epochs"):
        resume.check_position(tmp_path / "resume.pt", {**good, "step": 4}, epochs=3, steps=9)


def test_resume_every_is_validated_and_stays_out_of_the_checkpoint():
    with pytest.raises(ConfigError, match=r"runtime.resume_every: expected a number of epochs \(0 = off\) >= 0, got -1"):
        parse_params(compose(["runtime.resume_every=-1"]))
    p = parse_params(compose(["runtime.resume_every=5"]))
    job = training.TaskJob(0, 1, list(range(10)), [[0, 1, 2, 3]], "plain", p.method["finetune"], {})
    assert p.runtime.resume_every == 5
    assert training.run_config_snapshot(p, job, "cpu")["runtime"] == {"threads": 1, "numerics": "native",
                                                                      "precision": "fp32"}


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 sha_ni

processor\t: 1
vendor_id\t: SomeoneElse
"""


def test_platform_record_is_a_pure_function_of_what_decides_the_numbers():
    record = provenance.platform_record(CPUINFO, "x86_64", "2.14.1+cu130", "13.0", "AVX512",
                                        cuda_device="NVIDIA H200", numerics="portable")
    assert record == {"machine": "x86_64", "cpu_vendor": "AuthenticAMD", "cpu_family": "26", "cpu_model": "2",
                      "cpu_name": "AMD EPYC 9B45", "cpu_flags": ["avx", "avx2", "avx512_bf16", "avx512f", "fma"],
                      "torch": "2.14.1+cu130", "torch_cuda": "13.0", "torch_cpu_capability": "AVX512",
                      "cuda_device": "NVIDIA H200", "numerics": "portable"}
    cpu_only = provenance.platform_record(CPUINFO, "x86_64", "2.14.1+cpu", None, "AVX512")
    assert cpu_only["torch_cuda"] == "none" and "cuda_device" not in cpu_only and "numerics" not in cpu_only
    assert not provenance.same_platform(record, cpu_only)  # another torch build, a GPU, another mode
    assert provenance.same_platform(record, {**record, "cpu_name": "renamed", "cpu_flags": []})
    here = provenance.current_platform(torch.device("cpu"), "native")
    assert here["numerics"] == "native" and here["torch"] == torch.__version__ and "cuda_device" not in here


# --- In-process: a chain of stops at every step boundary gives the uninterrupted bytes ----------

TINY = ["model=vit_digits_tiny", "model.drop_path=0.1", "train=smoke", "train.epochs=3", "train.batch_size=16",
        "train.lr_step=1", "train.lr_gamma=0.5", "method=[ours]", "runtime.device=cpu"]
TASKS = [[0, 1, 2, 3], [4, 5]]


def _split() -> arrays.Split:
    rng = np.random.RandomState(0)
    return arrays.Split(rng.randint(0, 256, (60, 8, 8, 1)).astype(np.uint8), np.repeat(np.arange(6), 10))


class StopAfter:
    """A stop request that comes at the ``n``-th step boundary the loop asks at."""

    def __init__(self, n: int):
        self.n, self.asked = n, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked == self.n


def _checkpoint_bytes(payload: dict) -> bytes:
    """The bytes ``train`` writes for ``payload`` (pickle's layout included, not only the values)."""
    buffer = BytesIO()
    torch.save({"format_version": io.CHECKPOINT_FORMAT, **payload}, buffer)
    return buffer.getvalue()


def _same_outputs(a: tuple[dict, dict], b: tuple[dict, dict]) -> bool:
    (payload_a, rows_a), (payload_b, rows_b) = a, b
    return _checkpoint_bytes(payload_a) == _checkpoint_bytes(payload_b) and all(
        rows_a[k].dtype == rows_b[k].dtype and np.array_equal(rows_a[k], rows_b[k]) for k in rows_a)


def _interrupted_at_every_boundary(p, job, data, previous, centers, state_file: Path) -> tuple[tuple, list]:
    """Train ``job``, stopping at the first boundary of every segment, resuming from the file each time."""
    ident = {"task": job.task}
    positions, state = [], None
    while True:
        plan = resume.Plan(path=state_file, state=state, save=lambda g: resume.save(state_file, ident, g),
                           every=1, stop_requested=StopAfter(2))  # 1: before the first step
        try:
            out = training.train_task(p, job, data, previous, centers, logging.getLogger("test"), plan)
        except resume.Preempted as stop:
            positions.append((stop.epoch, stop.step))
            state = resume.load(state_file, ident)
            assert (state["epoch"], state["step"]) == (stop.epoch, stop.step)
            continue
        return out, positions


@pytest.mark.parametrize("pr_centers", ["task_start", "epoch"])
def test_a_task_stopped_at_every_step_boundary_ends_in_the_uninterrupted_bytes(tmp_path, pr_centers):
    p = parse_params(compose([*TINY, f"method.ours.pr_centers={pr_centers}"]))
    data, log = _split(), logging.getLogger("test")
    job0 = training.TaskJob(0, 1, list(range(10)), TASKS, "rotation", p.method["ours"], {})
    job1 = training.TaskJob(1, 1, list(range(10)), TASKS, "ours", p.method["ours"], {})
    clean0 = training.train_task(p, job0, data, None, None, log)
    clean1 = training.train_task(p, job1, data, *clean0, log)
    if pr_centers == "task_start":  # task 0 once: 40 images, 3 steps per epoch
        resumed0, positions0 = _interrupted_at_every_boundary(p, job0, data, None, None, tmp_path / "t0.pt")
        assert positions0 == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0)]
        assert _same_outputs(resumed0, clean0)
    resumed1, positions1 = _interrupted_at_every_boundary(p, job1, data, *clean0, tmp_path / "t1.pt")
    assert positions1 == [(0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]  # 20 new images: 2 steps per epoch
    assert _same_outputs(resumed1, clean1)
    assert not _same_outputs(clean1, training.train_task(parse_params(compose([*TINY, "train.lr=0.002"])), job1, data,
                                                         *clean0, log))  # the comparison can tell runs apart


# DyTox (ncil.learning.dytox_training): task 1 trains 2 epochs on 20 new images + 12 exemplars (2 steps of 16), herds
# 3 exemplars of each new class, then fine-tunes 2 epochs on the 18-row memory (2 steps): two phases to resume.
DYTOX_TINY = ["+experiment=digits_dytox", "model=vit_digits_tiny", "train=smoke", "train.epochs=2",
              "train.batch_size=16", "runtime.device=cpu",
              *[f"method.{m}.{k}={v}" for m in ("dytox", "dytox_pks") for k, v in (("exemplars_per_class", 3),
                                                                                 ("finetune_epochs", 2))]]


def _same_dytox_outputs(a: tuple[dict, dict, dict], b: tuple[dict, dict, dict]) -> bool:
    return _same_outputs(a[:2], b[:2]) and all(
        a[2][k].dtype == b[2][k].dtype and np.array_equal(a[2][k], b[2][k]) for k in a[2])


def test_a_dytox_task_stopped_at_every_step_boundary_of_both_phases_ends_in_the_uninterrupted_bytes(tmp_path):
    """Stops inside the training phase, after its last epoch (the rerun starts at herding) and inside the
    balanced fine-tuning (the state holds the memory herding chose): checkpoint, centers and memory are the
    uninterrupted run's, byte for byte."""
    p = parse_params(compose(DYTOX_TINY))
    data, log, state_file = _split(), logging.getLogger("test"), tmp_path / "resume.pt"
    job0 = training.TaskJob(0, 1, list(range(10)), TASKS, "dytox", p.method["dytox"], {})
    job1 = training.TaskJob(1, 1, list(range(10)), TASKS, "dytox", p.method["dytox"], {})
    clean0 = training.train_task(p, job0, data, None, None, log)
    clean1 = training.train_task(p, job1, data, clean0[0], clean0[1], log, previous_memory=clean0[2])
    assert [h["phase"] for h in clean1[0]["history"]] == ["task", "task", "finetune", "finetune"]
    ident, positions, state = {"task": 1}, [], None
    while True:
        plan = resume.Plan(path=state_file, state=state, save=lambda g: resume.save(state_file, ident, g),
                           every=1, stop_requested=StopAfter(2))  # 1: before the first step
        try:
            resumed1 = training.train_task(p, job1, data, clean0[0], clean0[1], log, plan, previous_memory=clean0[2])
            break
        except resume.Preempted as stop:
            state = resume.load(state_file, ident)
            assert (state["epoch"], state["step"]) == (stop.epoch, stop.step)
            positions.append((state["phase"], stop.epoch, stop.step))
            assert (state["memory"] is None) == (state["phase"] == "task")
    assert positions == [("task", 0, 1), ("task", 1, 0), ("task", 1, 1), ("task", 2, 0),
                         ("finetune", 0, 1), ("finetune", 1, 0), ("finetune", 1, 1), ("finetune", 2, 0)]
    assert _same_dytox_outputs(resumed1, clean1)
    other = parse_params(compose([*DYTOX_TINY, "method.dytox.finetune_lr=1e-3"])).method["dytox"]
    assert other.finetune_lr == 10 * job1.method.finetune_lr  # the fine-tuning alone differs
    assert not _same_dytox_outputs(clean1, training.train_task(
        p, training.TaskJob(1, 1, list(range(10)), TASKS, "dytox", other, {}), data, clean0[0], clean0[1], log,
        previous_memory=clean0[2]))


def test_a_dytox_state_of_another_phase_is_refused_naming_it(tmp_path):
    from ncil.learning.dytox_training import resumed_phase

    assert resumed_phase(None, tmp_path / "r.pt", "task", True) is None
    assert resumed_phase({"phase": "finetune", "memory": {}}, tmp_path / "r.pt", "task", True) == "finetune"
    with pytest.raises(io.ArtifactError, match=r"r.pt: progress.phase: expected one of base, found 'task'"):
        resumed_phase({"phase": "task", "memory": None}, tmp_path / "r.pt", "base", False)
    with pytest.raises(io.ArtifactError, match=r"expected one of task, finetune \(with the exemplar memory for "
                                               r"finetune\), found 'finetune'"):
        resumed_phase({"phase": "finetune", "memory": None}, tmp_path / "r.pt", "task", True)
    with pytest.raises(io.ArtifactError, match=r"found None: not a state of this DyTox task"):
        resumed_phase({}, tmp_path / "r.pt", "task", True)  # a state of another method's loop


def test_a_stop_before_the_first_step_saves_nothing_and_a_periodic_save_honours_resume_every(tmp_path):
    p = parse_params(compose(TINY))
    data, saved = _split(), []
    job0 = training.TaskJob(0, 1, list(range(10)), TASKS, "rotation", p.method["ours"], {})
    plan = resume.Plan(path=tmp_path / "r.pt", save=saved.append, every=1, stop_requested=lambda: True)
    with pytest.raises(resume.Preempted) as stop:
        training.train_task(p, job0, data, None, None, logging.getLogger("test"), plan)
    assert (stop.value.epoch, stop.value.step, stop.value.saved) == (0, 0, False) and saved == []
    plan = resume.Plan(path=tmp_path / "r.pt", save=saved.append, every=2)
    training.train_task(p, job0, data, None, None, logging.getLogger("test"), plan)
    assert [(s["epoch"], s["step"]) for s in saved] == [(2, 0)]  # every 2 epochs, none after the last


# --- The state file: kill inside its write, damage ------------------------------------------------

KILLED_SAVE = """
import sys
import torch
from ncil.learning import resume
from ncil.pipeline import io

path = sys.argv[1]
FIELDS = dict.fromkeys(resume.PROGRESS_KEYS, 0)  # every field a state must have; values are not checked here
resume.save(path, {"task": 0}, {**FIELDS, "epoch": 1, "weights": torch.arange(1000.0)})  # the previous state
real = io._write_all


def half_then_wait(tmp, data):
    real(tmp, memoryview(data)[: len(data) // 2])
    print("inside the write", flush=True)
    sys.stdin.read()  # blocks: the parent kills this process here


io._write_all = half_then_wait
resume.save(path, {"task": 0}, {**FIELDS, "epoch": 2, "weights": torch.zeros(1000)})
"""


def _fields() -> dict:
    """Every field a resumable state must have (``resume.load`` refuses one without them)."""
    return dict.fromkeys(resume.PROGRESS_KEYS, 0)


def test_a_kill_inside_the_state_write_leaves_the_previous_state_usable(tmp_path):
    path = tmp_path / "resume.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)], cwd=ROOT, env=env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    assert line == b"inside the write\n", proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdin.close(), proc.stdout.close(), proc.stderr.close()
    strays = [q.name for q in tmp_path.iterdir() if q.name.endswith(".tmp")]
    assert len(strays) == 1 and strays[0].startswith(".resume.pt.")  # the half-written second state
    progress = resume.load(path, {"task": 0})
    assert progress["epoch"] == 1 and torch.equal(progress["weights"], torch.arange(1000.0))
    resume.save(path, {"task": 0}, {**_fields(), "epoch": 2})  # the next save removes the dead writer's temporary
    assert sorted(q.name for q in tmp_path.iterdir()) == ["resume.pt"]


def test_a_damaged_state_is_refused_naming_it(tmp_path):
    path = tmp_path / "resume.pt"
    resume.save(path, {"task": 0}, {**_fields(), "epoch": 1, "weights": torch.arange(4096.0)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(io.ArtifactError, match=rf"^{path}: corrupt or truncated resumable state .*delete it \(rm {path}\)"):
        resume.load(path, {"task": 0})
    payload = torch.load(BytesIO(data), weights_only=True)
    payload["progress"]["weights"][7] = 1e9  # a changed value under the original hash
    buffer = BytesIO(b"")
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(io.ArtifactError, match=rf"^{path}: content_sha256: the state's values do not match"):
        resume.load(path, {"task": 0})
    assert resume.load(tmp_path / "absent.pt", {"task": 0}) is None


# --- The CLI: SIGTERM, refusals, removal, the platform sidecar -------------------------------------

EPOCHS = 12
TASK0 = ["train", "--seed", "1", "--task", "0", "--split", BASE_SPLIT, "--method", "plain"]


def _outputs(folder: str) -> list[str]:
    return ["--checkpoint", f"{folder}/model.pt", "--centers", f"{folder}/centers.parquet"]


def _md5s(folder: Path) -> dict[str, str]:
    return {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in ("model.pt", "centers.parquet")}


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never showed {text!r} (exit {proc.poll()})")


@pytest.fixture(scope="module")
def preempted(tiny_prepared_template, tmp_path_factory):
    """The prepared tiny project (12 epochs a task) whose task 0 was stopped by SIGTERM at a random epoch,
    and the md5s of the same task trained without interruption. Read-only: tests work on copies."""
    project = Path(shutil.copytree(tiny_prepared_template, tmp_path_factory.mktemp("preempted") / "project",
                                   symlinks=True))
    ncil(["params", f"train.epochs={EPOCHS}"], project)
    ncil([*TASK0, *_outputs("clean"), "--log", "logs/clean.log"], project)
    epoch = random.randint(1, EPOCHS - 4)
    log = project / "logs/t0.log"
    proc = subprocess.Popen([sys.executable, "-m", "ncil", *TASK0, *_outputs(BASE_TASK), "--log", "logs/t0.log"],
                            cwd=project, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(log, f"task 0 epoch {epoch}/{EPOCHS} ", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    return project, epoch, proc.returncode, stderr, _md5s(project / "clean")


def _copy(preempted, tmp_path) -> Path:
    return Path(shutil.copytree(preempted[0], tmp_path / "project", symlinks=True))


@pytest.mark.slow
def test_sigterm_saves_the_state_and_the_rerun_resumes_to_the_same_bytes(preempted, tmp_path):
    _, epoch, rc, stderr, clean = preempted
    project = _copy(preempted, tmp_path)
    task = project / BASE_TASK
    assert rc == resume.PREEMPTED_EXIT, stderr
    lines = [line for line in stderr.splitlines() if "preempted:" in line]
    assert len(lines) == 1 and lines[0].endswith(f"of task 0 ({task.relative_to(project)}/resume.pt); rerun to resume"), \
        f"SIGTERM after epoch {epoch}: {stderr}"
    assert (task / "resume.pt").is_file() and not (task / "model.pt").exists()
    assert not (task / "platform.json").exists()
    proc = ncil([*TASK0, *_outputs(BASE_TASK), "--log", "logs/t0.log"], project)
    assert "task 0: resuming from runs/digits/base4/plain/seed1/task_0/resume.pt after epoch" in proc.stderr
    assert _md5s(task) == clean, f"SIGTERM after epoch {epoch}"
    assert not (task / "resume.pt").exists()  # removed once the outputs are written
    sidecar = json.loads((task / "platform.json").read_text())
    assert sidecar["checkpoint"] == "model.pt"
    assert sidecar["checkpoint_sha256"] == hashlib.sha256((task / "model.pt").read_bytes()).hexdigest()
    assert provenance.same_platform(sidecar["platform"], provenance.current_platform(torch.device("cpu"), "native"))
    assert (project / "clean/platform.json").read_bytes() == (task / "platform.json").read_bytes()


@pytest.mark.parametrize("change, field", [
    (["--seed", "2"], "identity.job.seed: expected 2, found 1"),
    ("train.lr=0.002", "identity.config.train.lr: expected 0.002, found 0.001"),
])
@pytest.mark.slow
def test_a_state_of_another_configuration_is_refused_naming_the_field(preempted, tmp_path, change, field):
    project = _copy(preempted, tmp_path)
    args = [*TASK0, *_outputs(BASE_TASK)]
    if isinstance(change, list):
        args[args.index("--seed") + 1] = change[1]
    else:
        ncil(["params", f"train.epochs={EPOCHS}", change], project)
    proc = ncil(args, project, check=False)
    state = f"{BASE_TASK}/resume.pt"
    assert proc.returncode == 2
    assert f"error: {state}: {field}: this resumable state belongs to another configuration; delete it (rm {state})" \
        in proc.stderr
    assert (project / state).is_file() and not (project / BASE_TASK / "model.pt").exists()


@pytest.mark.slow
def test_a_truncated_state_is_refused_not_silently_restarted(preempted, tmp_path):
    project = _copy(preempted, tmp_path)
    state = project / BASE_TASK / "resume.pt"
    state.write_bytes(state.read_bytes()[:1000])
    proc = ncil([*TASK0, *_outputs(BASE_TASK)], project, check=False)
    assert proc.returncode == 2
    assert f"error: {BASE_TASK}/resume.pt: corrupt or truncated resumable state" in proc.stderr
    assert not (project / BASE_TASK / "model.pt").exists()


# --- The state belongs to its data, its split and its code (issue 20 item 3) ----------------------


def test_a_refusal_names_what_changed_params_split_data_or_code():
    path = Path("runs/x/task_0/resume.pt")
    said = {field: resume.mismatch_message(path, (field, "a", "b")) for field in
            ("identity.config.train.lr", "identity.job.seed", "identity.previous_checkpoint_sha256",
             "identity.split.class_order[5]", "identity.data.data/digits/train_images.npy",
             "identity.code.ncil/learning/training.py")}
    belongs = {field: text.split("belongs to ")[1].split(" ")[0:2] for field, text in said.items()}
    assert belongs == {"identity.config.train.lr": ["another", "configuration;"],
                       "identity.job.seed": ["another", "configuration;"],
                       "identity.previous_checkpoint_sha256": ["another", "previous"],
                       "identity.split.class_order[5]": ["another", "split"],
                       "identity.data.data/digits/train_images.npy": ["other", "data"],
                       "identity.code.ncil/learning/training.py": ["other", "training"]}
    assert said["identity.code.ncil/learning/training.py"] == (
        f"{path}: identity.code.ncil/learning/training.py: expected 'a', found 'b': this resumable state belongs to other "
        f"training code (a file the train step runs changed); delete it (rm {path}) to train this task again "
        "from epoch 1")


def test_the_code_identity_covers_the_files_the_train_step_runs():
    """The files hashed into a state are the ones dvc.yaml and the Snakemake rule list for a train step."""
    from ncil.pipeline import workflow
    from ncil.stages import train as train_stage

    code = train_stage.code_identity()
    assert sorted(code) == list(workflow.code_deps("train"))
    assert code["ncil/learning/training.py"] == hashlib.sha256((ROOT / "ncil/learning/training.py").read_bytes()).hexdigest()


def _reprepare_with_one_image_replaced(project: Path) -> str:
    """What ``prepare`` writes after one training image of a task-0 class was replaced in the source: the
    new arrays, then the manifest with their checksums (digits come from scikit-learn, so the prepared array
    stands in for the source). Returns the new SHA-256 of the training images."""
    folder = project / "data/digits"
    images, labels = io.read_array(folder / "train_images.npy"), io.read_array(folder / "train_labels.npy")
    task0_class = json.loads((project / BASE_SPLIT).read_text())["tasks"][0][0]
    row = int(np.flatnonzero(labels == task0_class)[0])
    images = images.copy()
    images[row] = 255 - images[row]  # another image of the same class
    io.write_array(folder / "train_images.npy", images)
    manifest = json.loads((folder / "manifest.json").read_text())
    extra = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "dataset", "files")}
    io.write_manifest(folder / "manifest.json", "digits", [folder / name for name in manifest["files"]], extra)
    return io.sha256_file(folder / "train_images.npy")


@pytest.mark.slow
def test_a_state_of_other_data_is_refused_and_a_fresh_run_equals_the_uninterrupted_one(preempted, tmp_path):
    project = _copy(preempted, tmp_path)
    state = f"{BASE_TASK}/resume.pt"
    old = io.sha256_file(project / "data/digits/train_images.npy")
    new = _reprepare_with_one_image_replaced(project)
    proc = ncil([*TASK0, *_outputs(BASE_TASK)], project, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (f"error: {state}: identity.data.data/digits/train_images.npy: expected {new!r}, found {old!r}: this "
            f"resumable state belongs to other data (the prepared data changed: a new prepare); delete it (rm {state})"
            ) in proc.stderr
    assert (project / state).is_file() and not (project / BASE_TASK / "model.pt").exists()
    (project / state).unlink()  # what the refusal says to do
    ncil([*TASK0, *_outputs(BASE_TASK)], project)
    ncil([*TASK0, *_outputs("clean_new")], project)  # an uninterrupted run on the new data
    assert _md5s(project / BASE_TASK) == _md5s(project / "clean_new")
    assert _md5s(project / "clean_new") != preempted[4]  # the replaced image changes the checkpoint


@pytest.mark.slow
def test_a_state_of_another_split_is_refused_naming_it(preempted, tmp_path):
    project = _copy(preempted, tmp_path)
    split_file = project / BASE_SPLIT
    split = json.loads(split_file.read_text())
    order = split["class_order"]
    order[-2], order[-1] = order[-1], order[-2]  # the same task 0, another order of the classes after it
    split_file.write_text(json.dumps(split))
    proc = ncil([*TASK0, *_outputs(BASE_TASK)], project, check=False)
    state = f"{BASE_TASK}/resume.pt"
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (f"error: {state}: identity.split.class_order[{len(order) - 2}]: expected {order[-2]}, found {order[-1]}: "
            f"this resumable state belongs to another split (the --split file changed)") in proc.stderr


@pytest.mark.slow
def test_a_state_of_other_code_is_refused_and_code_outside_the_step_does_not_matter(preempted, tmp_path):
    """The project's copy of the package is what `python -m ncil` runs there (cwd first on sys.path)."""
    project = _copy(preempted, tmp_path)
    state, trained = f"{BASE_TASK}/resume.pt", project / "ncil/learning/training.py"
    original = trained.read_text()
    trained.write_text(original + "# an edit\n")
    proc = ncil([*TASK0, *_outputs(BASE_TASK)], project, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (f"error: {state}: identity.code.ncil/learning/training.py: expected {io.sha256_file(trained)!r}, found "
            f"{hashlib.sha256(original.encode()).hexdigest()!r}: this resumable state belongs to other training "
            "code") in proc.stderr
    trained.write_text(original)
    tables = project / "ncil/reports/results_table.py"  # not run by a train step
    tables.write_text(tables.read_text() + "# an edit\n")
    proc = ncil([*TASK0, *_outputs(BASE_TASK)], project)
    assert "task 0: resuming from" in proc.stderr
    assert _md5s(project / BASE_TASK) == preempted[4]


# --- Clear stops: Ctrl-C, an unreadable state (issue 20 item 8) ----------------------------------


@pytest.mark.slow
def test_ctrl_c_saves_the_state_says_one_line_and_exits_130_then_the_rerun_resumes(preempted, tmp_path):
    project = _copy(preempted, tmp_path)
    shutil.rmtree(project / BASE_TASK)
    log = project / "logs/int.log"
    proc = subprocess.Popen([sys.executable, "-m", "ncil", *TASK0, *_outputs(BASE_TASK), "--log", "logs/int.log"],
                            cwd=project, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(log, f"task 0 epoch 1/{EPOCHS} ", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]  # 128 + SIGINT, as a shell reports a Ctrl-C
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    lines = [line for line in stderr.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "interrupted: state saved at epoch " in lines[0], stderr[-3000:]
    assert lines[0].endswith(f"of task 0 ({BASE_TASK}/resume.pt); rerun to resume")
    assert (project / BASE_TASK / "resume.pt").is_file() and not (project / BASE_TASK / "model.pt").exists()
    proc = ncil([*TASK0, *_outputs(BASE_TASK), "--log", "logs/int.log"], project)
    assert "task 0: resuming from" in proc.stderr
    assert _md5s(project / BASE_TASK) == preempted[4]


def test_stop_flag_takes_sigint_and_sigterm_and_gives_their_exit_status():
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN where pytest runs in the background (nohup, &)
    flag = resume.StopFlag().install()
    try:
        assert not flag() and flag.exit_status == resume.PREEMPTED_EXIT
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: a request
        signal.raise_signal(signal.SIGTERM)
        assert flag() and flag.signum == signal.SIGINT and flag.exit_status == 130
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            signal.raise_signal(signal.SIGINT)
    finally:
        flag.uninstall()
    assert signal.getsignal(signal.SIGINT) is before  # what it was, restored


def test_the_stop_line_says_what_stopped_the_job_and_what_was_saved():
    from ncil.stages.train import stop_line

    state, flag = Path("runs/x/task_0/resume.pt"), resume.StopFlag()
    flag.signum = signal.SIGINT
    assert stop_line(resume.Preempted(3, 0, 9, 0), flag, state) == \
        f"interrupted: state saved at epoch 3 step 9/9 of task 0 ({state}); rerun to resume"
    assert stop_line(resume.Preempted(0, 0, 9, 1, saved=False), flag, state) == \
        "interrupted: before the first step of task 1, nothing to save; rerun to train it"
    flag.signum = signal.SIGTERM
    assert stop_line(resume.Preempted(2, 4, 9, 1, saved=False), flag, state) == \
        "preempted: runtime.resume_every is 0, no state saved; rerun to train task 1 again from epoch 1"


def test_an_unreadable_state_is_named_unreadable_not_corrupt(tmp_path, monkeypatch):
    import builtins
    import errno

    folder = tmp_path / "resume.pt"
    folder.mkdir()  # a folder in its place
    with pytest.raises(io.ArtifactError, match=rf"^{folder}: cannot read the resumable state \(Is a directory\); "
                                               r"check the file and its permissions"):
        resume.load(folder, {"task": 0})
    path = tmp_path / "denied" / "resume.pt"
    resume.save(path, {"task": 0}, _fields())
    real_open = builtins.open

    def denied(file, *args, **kwargs):  # what chmod 000 gives a user other than root (tests may run as root)
        if Path(str(file)) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(io.ArtifactError, match=rf"^{path}: cannot read the resumable state \(Permission denied\)"):
        resume.load(path, {"task": 0})


@pytest.mark.slow
def test_a_folder_in_place_of_the_state_is_refused_by_train(preempted, tmp_path):
    project = _copy(preempted, tmp_path)
    state = project / BASE_TASK / "resume.pt"
    state.unlink()
    state.mkdir()
    proc = ncil([*TASK0, *_outputs(BASE_TASK)], project, check=False)
    assert proc.returncode == 2
    assert f"error: {BASE_TASK}/resume.pt: cannot read the resumable state (Is a directory)" in proc.stderr
    assert "corrupt" not in proc.stderr


# --- Under Snakemake: kill -9 the training job at a random epoch, rerun, compare -------------------

TARGET = "results/digits/base4_inc2/finetune/seed1/eval"
SNAKE_EPOCHS = 8


def _snakemake(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "snakemake", "--cores", "1", *args], project)


def _tree(project: Path) -> dict[str, str]:
    """md5 of every checkpoint, centers table, platform record and evaluation of the target."""
    out = {}
    for top in ("runs", TARGET):
        for f in sorted((project / top).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(project))] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_a_training_job_killed_under_snakemake_resumes_to_the_same_bytes(tmp_path):
    """kill -9 of one training job at a random task and epoch; Snakemake fails it; the rerun resumes it."""
    import psutil

    clean = copy_project(tmp_path / "clean")
    ncil(["params", f"train.epochs={SNAKE_EPOCHS}"], clean)
    _snakemake(clean, TARGET)
    killed = Path(shutil.copytree(clean, tmp_path / "killed", symlinks=True))
    for done in ("runs", TARGET, "logs/train"):  # the data and splits stay: the trains and evaluate run again
        shutil.rmtree(killed / done)
    task, epoch = random.randint(0, 3), random.randint(2, SNAKE_EPOCHS - 3)  # a state exists after epoch 1
    folder = ("runs/digits/base4/plain/seed1/task_0" if task == 0 else
              f"runs/digits/base4_inc2/finetune/seed1/task_{task}")
    log = killed / ("logs/train/digits/base4/plain/seed1/task_0.log" if task == 0 else
                    f"logs/train/digits/base4_inc2/finetune/seed1/task_{task}.log")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", TARGET], cwd=killed, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(log, f"task {task} epoch {epoch}/{SNAKE_EPOCHS} ", proc)
        jobs = [c for c in psutil.Process(proc.pid).children(recursive=True)
                if "ncil" in c.cmdline() and f"{folder}/model.pt" in c.cmdline()]
        assert len(jobs) == 1, f"task {task}: {[c.cmdline() for c in psutil.Process(proc.pid).children(recursive=True)]}"
        jobs[0].send_signal(signal.SIGKILL)
        assert proc.wait(timeout=300) != 0  # Snakemake saw its job fail
    finally:
        if proc.poll() is None:
            proc.kill()
    where = f"task {task} killed after epoch {epoch}"
    assert (killed / folder / "resume.pt").is_file() and not (killed / folder / "model.pt").exists(), where
    _snakemake(killed, TARGET)
    assert "resuming from" in log.read_text(), where
    assert not (killed / folder / "resume.pt").exists(), where
    assert _tree(killed) == _tree(clean), where


# --- The bench -------------------------------------------------------------------------------------


def test_bench_reports_the_state_size_and_save_cost_against_an_epoch(capsys):
    from ncil.cli import main

    assert main(["bench", "--resume-state", "--method", "finetune", "--steps", "1", "--saves", "1",
                 "--batch-size", "64", "-o", "model=vit_digits_tiny", "--images", "640"]) == 0
    out = capsys.readouterr().out
    assert "resumable state of finetune:" in out and " MB" in out and "% of an epoch" in out
    assert "10 steps of 64 images" in out  # 640 images / batch 64
