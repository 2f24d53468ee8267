"""Nothing half-written, nothing silently corrupt (issue 10, item 7).

* a job killed with SIGKILL inside a write leaves a temporary file that the next write of the same
  artifact removes, and that neither git nor DVC takes in;
* outputs get the mode of any new file (0666 less the umask), not mkstemp's 0600;
* a write that cannot happen (no permission, read-only, no space, file too large) is one
  ``ArtifactError`` line naming the artifact, and ``ensure_writable`` says so before long work;
* a step with several outputs leaves missing files when interrupted, never an old/new mix;
* a truncated or damaged class-centers or evaluation table fails naming the file, never a traceback.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ncil.data.arrays import load_split
from ncil.data.preparation import prepare
from ncil.pipeline import io, paths
from ncil.pipeline.config import load_params
from tests.conftest import ROOT, env

# --- A kill inside a write -----------------------------------------------------------------------

KILLED_WRITER = """
import sys
import numpy as np
from ncil.pipeline import io

kind, target = sys.argv[1], sys.argv[2]


def wait_for_the_kill():
    print("inside the write", flush=True)
    sys.stdin.read()  # blocks: the parent kills this process here


if kind == "bytes":
    with io.atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"the first half of the new")
            fh.flush()
        wait_for_the_kill()
else:  # a memory-mapped array filled block by block, as prepare writes ImageNet's images
    def blocks():
        yield np.full((2, 4), 7, np.uint8)
        wait_for_the_kill()
        yield np.full((2, 4), 7, np.uint8)

    io.write_array_chunks(target, (4, 4), np.uint8, blocks())
"""


def _kill_inside_a_write(kind: str, target: Path) -> None:
    _kill_when_inside(KILLED_WRITER, [kind, str(target)])


def _kill_when_inside(script: str, args: list[str]) -> None:
    """Run ``script``, wait for it to print "inside the write", then kill it with SIGKILL."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env=env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    if line != b"inside the write\n":
        proc.kill()
        raise AssertionError(f"the writer did not reach its write: {proc.communicate()[1].decode()[-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdin.close(), proc.stdout.close(), proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _strays(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("kind", ["bytes", "chunks"])
def test_a_killed_write_leaves_a_temporary_file_that_the_next_write_removes(tmp_path, kind):
    target = tmp_path / ("model.pt" if kind == "bytes" else "train_images.npy")
    old = np.arange(3, dtype=np.uint8)
    io.write_bytes(target, b"the old, complete file") if kind == "bytes" else io.write_array(target, old)
    before = target.read_bytes()

    _kill_inside_a_write(kind, target)
    stray = _strays(tmp_path)
    assert len(stray) == 1 and stray[0].startswith(f".{target.name}.")  # the kill left its temporary file
    assert target.read_bytes() == before  # and the artifact is still the old, complete one

    if kind == "bytes":
        io.write_bytes(target, b"the new, complete file")
        assert target.read_bytes() == b"the new, complete file"
    else:
        io.write_array_chunks(target, (4, 4), np.uint8, [np.full((4, 4), 7, np.uint8)])
        assert np.array_equal(io.read_array(target), np.full((4, 4), 7, np.uint8))
    assert _strays(tmp_path) == []  # the rerun removed the temporary file of the killed job


def test_only_temporaries_of_finished_writers_are_removed(tmp_path):
    target = tmp_path / "centers.parquet"
    host = io._host()
    running = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    names = {
        "killed here": f".centers.parquet.{host}-{gone.pid}-0a0b0c0d.tmp",
        "writing here": f".centers.parquet.{host}-{running.pid}-0a0b0c0d.tmp",
        "other node, before this process": ".centers.parquet.node17-4242-0a0b0c0d.tmp",
        "other node, now": ".centers.parquet.node17-4343-0a0b0c0d.tmp",
        "older naming (mkstemp)": ".centers.parquet.k2j_x9a1.tmp",
        "another artifact": f".model.pt.{host}-{gone.pid}-0a0b0c0d.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    long_ago = time.time() - 86400
    for key in ("other node, before this process", "older naming (mkstemp)"):
        os.utime(tmp_path / names[key], (long_ago, long_ago))
    try:
        io.write_bytes(target, b"complete")
    finally:
        running.stdin.close()
        running.wait()
    kept = {key for key, name in names.items() if (tmp_path / name).exists()}
    assert kept == {"writing here", "other node, now", "another artifact"}


def test_git_and_dvc_ignore_temporary_files_in_output_folders(tmp_path):
    stray = "results/digits/base4_inc2/finetune/seed1/eval/.task_0.parquet.node1-123-0a0b0c0d.tmp"
    real = "results/digits/base4_inc2/finetune/seed1/eval/task_0.parquet"
    git = subprocess.run(["git", "check-ignore", "--no-index", stray, real], cwd=ROOT, capture_output=True, text=True)
    assert git.stdout.split() == [stray]
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, env=env(), check=True)
    (tmp_path / ".dvcignore").write_bytes((ROOT / ".dvcignore").read_bytes())
    found = subprocess.run([dvc, "check-ignore", stray, real], cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert found.stdout.split() == [stray], found.stderr


# --- File modes ----------------------------------------------------------------------------------


def _write_every_kind(folder: Path) -> list[Path]:
    files = [folder / "a.json", folder / "b.npy", folder / "c.npy", folder / "d.parquet", folder / "e.pt"]
    io.write_json(files[0], {"a": 1})
    io.write_array(files[1], np.arange(4))
    io.write_array_chunks(files[2], (2, 2), np.uint8, [np.zeros((2, 2), np.uint8)])
    io.write_predictions(files[3], {c: [0, 1] for c in io.PREDICTION_COLUMNS}, task=0)
    io.save_checkpoint(files[4], {"task": 0, "seen_classes": [0], "config": {}, "model": {}})
    return files


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_get_the_mode_of_a_new_file(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        files = _write_every_kind(tmp_path)
    finally:
        os.umask(previous)
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: oct(mode) for f in files}


# --- Writes that cannot happen ---------------------------------------------------------------------


@pytest.fixture
def unwritable(tmp_path):
    """A folder where no file can be created: chmod 0555, or /sys where root ignores file modes."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    try:
        fd = os.open("/sys/ncil-probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            yield Path("/sys")
            return
        pytest.skip(f"running as root and /sys gives {err}: no folder here refuses writes")
    os.close(fd)
    os.unlink("/sys/ncil-probe")
    pytest.skip("running as root and /sys accepts files: no folder here refuses writes")


CANNOT = r"cannot write \((Permission denied|Operation not permitted|Read-only file system)\)"


def test_a_folder_without_permission_fails_in_one_line_naming_the_artifact(unwritable):
    for path in (unwritable / "metrics.json", unwritable / "task_0" / "model.pt"):
        with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(path))}: {CANNOT}$"):
            io.ensure_writable(path)
        with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(path))}: {CANNOT}$"):
            io.write_json(path, {"a": 1})


def test_the_cli_reports_an_unwritable_output_in_one_line(unwritable):
    out = unwritable / "split.json"
    proc = subprocess.run([sys.executable, "-m", "ncil", "split", "--params", "params.yaml", "--initial", "4",
                           "--out", str(out)], cwd=ROOT, env=env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert re.fullmatch(f"error: {re.escape(str(out))}: {CANNOT}\n", proc.stderr), proc.stderr


def _failing_for(folder: Path, real, code: int):
    def fake(target, *args, **kwargs):
        name = os.readlink(f"/proc/self/fd/{target}") if isinstance(target, int) else os.fspath(target)
        if name.startswith(str(folder)):
            raise OSError(code, os.strerror(code))
        return real(target, *args, **kwargs)

    return fake


def test_a_full_disk_fails_naming_the_artifact_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    io.write_text(target, "old\n")
    monkeypatch.setattr(os, "write", _failing_for(tmp_path, os.write, errno.ENOSPC))
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(target))}: cannot write \\(No space left on device\\)$"):
        io.write_text(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_read_only_file_system_fails_naming_the_artifact(tmp_path, monkeypatch):
    target = tmp_path / "eval" / "task_0.parquet"
    monkeypatch.setattr(os, "open", _failing_for(tmp_path / "eval", os.open, errno.EROFS))
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(target))}: cannot write \\(Read-only file system\\)$"):
        io.write_predictions(target, {c: [0] for c in io.PREDICTION_COLUMNS}, task=0)


FILE_SIZE_LIMITED = """
import resource, sys
import numpy as np
from ncil.pipeline import io

folder = sys.argv[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # writes past 4 kB: EFBIG
noise = np.random.default_rng(0).integers(0, 2**30, 20_000)
writers = {
    "blob.pt": lambda p: io.write_bytes(p, bytes(20_000)),
    "labels.npy": lambda p: io.write_array(p, noise),
    "images.npy": lambda p: io.write_array_chunks(p, (20, 1000), np.uint8, (np.ones((5, 1000), np.uint8) for _ in range(4))),
    "task_0.parquet": lambda p: io.write_predictions(p, {c: noise for c in io.PREDICTION_COLUMNS}, task=0),
}
for name, write in writers.items():
    try:
        write(f"{folder}/{name}")
        print(f"{folder}/{name}: written")
    except io.ArtifactError as err:
        print(err)
"""


def test_every_writer_reports_a_real_kernel_write_error_naming_the_artifact(tmp_path):
    """A per-process file size limit makes the kernel refuse the writes (EFBIG), as a full disk would."""
    proc = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED, str(tmp_path)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = ["blob.pt", "labels.npy", "images.npy", "task_0.parquet"]
    assert proc.stdout.splitlines() == [f"{tmp_path}/{n}: cannot write (File too large)" for n in names]
    assert list(tmp_path.iterdir()) == []  # no artifact, no temporary file


def test_an_error_reading_a_source_inside_a_write_is_not_called_a_write_error(tmp_path):
    def blocks():
        yield np.zeros((1, 2), np.uint8)
        raise PermissionError(errno.EACCES, "Permission denied", "/data/raw/train/cat/001.png")

    with pytest.raises(PermissionError, match="001.png"):
        io.write_array_chunks(tmp_path / "x.npy", (2, 2), np.uint8, blocks())
    assert list(tmp_path.iterdir()) == []


def test_ensure_writable_checks_without_creating_anything(tmp_path):
    out = tmp_path / "runs" / "task_0" / "model.pt"
    io.ensure_writable(out)
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(out.parent))}: cannot write \\(it is a folder"):
        io.ensure_writable(out.parent)
    (tmp_path / "file").write_text("x")
    with pytest.raises(io.ArtifactError, match="file/model.pt: cannot write \\(a folder above it is a file\\)"):
        io.ensure_writable(tmp_path / "file" / "model.pt")


def test_ensure_writable_refuses_outputs_that_do_not_fit(tmp_path, monkeypatch):
    small = os.statvfs_result((4096, 4096, 100, 10, 10, 100, 10, 10, 0, 255))  # 10 free blocks: 40 kB
    monkeypatch.setattr(os, "statvfs", lambda path: small)
    io.ensure_writable(tmp_path / "a.npy", sizes={tmp_path / "a.npy": 40_000})
    with pytest.raises(io.ArtifactError, match=r"a.npy: cannot write \(No space left on device: .* need 40,961 bytes, "
                                               r"40,960 are free"):
        io.ensure_writable(tmp_path / "a.npy", sizes={tmp_path / "a.npy": 40_961})


@pytest.mark.parametrize("new, old, peak", [([10, 5], [0, 0], 15), ([10, 5], [10, 5], 10), ([3, 10], [8, 0], 5),
                                            ([], [], 0)])
def test_space_needed_is_the_peak_while_replacing_files_one_by_one(new, old, peak):
    assert io.space_needed(new, old) == peak


# --- Several outputs of one step -------------------------------------------------------------------


def test_write_files_never_leaves_old_and_new_outputs_side_by_side(tmp_path, monkeypatch):
    csv, png = tmp_path / "fig.csv", tmp_path / "fig.png"
    io.write_files({csv: "old\n", png: b"old png"})
    real, calls = io.write_bytes, []

    def killed_on_the_second(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is stopped between the two files
        real(path, data)

    monkeypatch.setattr(io, "write_bytes", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        io.write_files({csv: "new\n", png: b"new png"})
    assert csv.read_text() == "new\n" and not png.exists()  # incomplete, visibly: the old PNG is gone


# --- Damaged tables --------------------------------------------------------------------------------


def _centers(path: Path, n: int = 6, dim: int = 16) -> np.ndarray:
    center = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    io.write_centers(path, {"class_id": np.arange(n), "original_class": [9, 3, 5, 1, 7, 0][:n],
                            "task": [0, 0, 0, 0, 1, 1][:n], "n_samples": [20] * n, "spread": [0.5] * n,
                            "center": center}, task=1, feature_dim=dim)
    return center


def _predictions(path: Path) -> list[list[int]]:
    tasks = [[9, 3, 5, 1], [7, 0]]
    original = np.array([9, 3, 5, 1, 7, 0] * 5)
    order = [c for t in tasks for c in t]
    label = np.array([order.index(o) for o in original])
    io.write_predictions(path, {"sample": np.arange(len(original)) * 2 + 1, "label": label, "original_label": original,
                                "label_task": (label >= 4).astype(int), "prediction": (label * 7) % 6}, task=1)
    return tasks


def _flip_every_byte(path: Path, read) -> dict:
    """Read ``path`` with each of its bytes inverted in turn: how many reads failed cleanly or silently."""
    good = path.read_bytes()
    reference = read(path)
    counts = {"refused": 0, "unchanged": 0, "silent": 0}
    damaged = path.with_name("damaged" + path.suffix)
    for i in range(len(good)):
        damaged.write_bytes(good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :])
        try:
            out = read(damaged)
        except io.ArtifactError as err:
            assert str(err).startswith(f"{damaged}: ") and "\n" not in str(err)
            counts["refused"] += 1
            continue
        same = all(np.array_equal(np.asarray(out[k]), np.asarray(reference[k])) for k in reference)
        counts["unchanged" if same else "silent"] += 1
    return counts


def test_no_damaged_byte_of_an_evaluation_table_gives_a_traceback(tmp_path):
    """Every inverted byte either fails naming the file or leaves the table's content as it was, but
    for a few values moved inside their recorded range (1.3% measured; without a checksum in the
    file, whose bytes must not change, that rest is only caught by `verify` against metrics.json)."""
    path = tmp_path / "task_1.parquet"
    tasks = _predictions(path)
    counts = _flip_every_byte(path, lambda p: io.read_predictions(p, tasks))
    assert counts["silent"] <= 0.03 * sum(counts.values()), counts


def test_no_damaged_byte_of_a_centers_table_gives_a_traceback(tmp_path):
    path = tmp_path / "centers.parquet"
    _centers(path)
    counts = _flip_every_byte(path, io.read_centers)
    assert counts["refused"] > counts["silent"], counts  # the rest: center values, caught by the checkpoint's hash


def test_a_center_value_moved_past_the_recorded_maximum_is_refused(tmp_path):
    path = tmp_path / "centers.parquet"
    center = _centers(path)
    data = bytearray(path.read_bytes())
    at = bytes(data).index(center.max().tobytes())  # zstd keeps incompressible floats as they are
    data[at + 3] ^= 0x40  # the exponent's top bit: the largest value leaves the recorded range
    path.write_bytes(bytes(data))
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(path))}: corrupt class-centers table \\(center: "
                                               "values range over"):
        io.read_centers(path)


def test_any_damaged_byte_of_the_centers_fails_with_its_checkpoint(tmp_path):
    centers, model = tmp_path / "centers.parquet", tmp_path / "model.pt"
    center = _centers(centers)
    io.save_checkpoint(model, {"task": 1, "seen_classes": [9, 3, 5, 1, 7, 0], "config": {},
                               "model": {"w": torch.zeros(2)}}, centers_file=centers)
    data = bytearray(centers.read_bytes())
    data[bytes(data).index(center[2].tobytes()) + 5] ^= 0x01  # a value inside the recorded range
    centers.write_bytes(bytes(data))
    assert io.read_centers(centers)["center"][2, 1] != center[2, 1]  # the table alone cannot see it
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(centers))}: does not belong to .*changed or corrupted"):
        io.load_checkpoint(model, centers)


def _rewrite(path: Path, column: str, values) -> None:
    out = io.read_predictions(path)
    task = out.pop("task")
    out[column] = np.asarray(values)
    io.write_predictions(path, out, task=task)


@pytest.mark.parametrize("column, change, problem", [
    ("sample", lambda v: np.r_[v[1], v[1:]], "sample: expected strictly increasing"),
    ("prediction", lambda v: np.r_[-1, v[1:]], "prediction: expected no negative value"),
    ("label", lambda v: np.r_[v[1], v[1:]], "label: expected one label per original_label"),
    ("label_task", lambda v: np.r_[1 - v[0], v[1:]], "label_task: expected one task per label"),
    ("label_task", lambda v: v + 1, "label_task: expected one task per label, non-decreasing in it, at most 1"),
])
def test_an_evaluation_table_that_contradicts_itself_is_refused(tmp_path, column, change, problem):
    path = tmp_path / "task_1.parquet"
    _predictions(path)
    _rewrite(path, column, change(io.read_predictions(path)[column]))
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(path))}: {problem}"):
        io.read_predictions(path)


@pytest.mark.parametrize("tasks, problem", [
    ([[9, 3, 5, 2], [7, 0]], "original_label: expected classes seen by task 1"),
    ([[3, 9, 5, 1], [7, 0]], "label: expected each class's position"),
    ([[9, 3, 5], [1, 7, 0]], "label_task: expected the task of the split"),
    ([[9, 3, 5, 1]], "ncil.task: task 1, the split has 1 tasks"),
])
def test_an_evaluation_table_of_another_split_is_refused(tmp_path, tasks, problem):
    path = tmp_path / "task_1.parquet"
    io.read_predictions(path, _predictions(path))  # with its own split it passes
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(path))}: {problem}"):
        io.read_predictions(path, tasks)


def test_a_prediction_outside_the_seen_classes_is_refused(tmp_path):
    path = tmp_path / "task_1.parquet"
    tasks = _predictions(path)
    _rewrite(path, "prediction", np.r_[6, io.read_predictions(path)["prediction"][1:]])
    io.read_predictions(path)  # alone it cannot know how many classes were seen
    with pytest.raises(io.ArtifactError, match="prediction: expected one of the 6 classes seen by task 1"):
        io.read_predictions(path, tasks)


def test_a_table_without_its_format_version_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "task_0.parquet"
    pq.write_table(pa.table({c: pa.array([0], pa.int32()) for c in io.PREDICTION_COLUMNS})
                   .replace_schema_metadata({"ncil.task": "0"}), path)
    with pytest.raises(io.ArtifactError, match="ncil.format_version: expected 1 in the schema metadata, found none"):
        io.read_predictions(path)


def test_every_committed_evaluation_table_passes_the_checks():
    files = sorted(ROOT.glob("results/*/*/*/seed*/eval/task_*.parquet"))
    assert files
    for path in files:
        setting = path.parents[3]
        io.read_predictions(path, json.loads((setting / "split.json").read_text())["tasks"])


# --- Arrays against their manifest -----------------------------------------------------------------


def test_a_truncated_memory_mapped_array_names_the_file(tmp_path):
    path = tmp_path / "train_images.npy"
    io.write_array(path, np.zeros((100, 8, 8, 1), np.uint8))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(path))}: corrupt or truncated NPY array"):
        io.read_array(path, mmap=True)


def test_npy_size_is_the_size_write_array_writes(tmp_path):
    for shape, dtype in (((1295, 8, 8, 1), np.uint8), ((7,), np.int64), ((0, 3), np.float32)):
        io.write_array(tmp_path / "a.npy", np.zeros(shape, dtype))
        assert io.npy_size(shape, dtype) == (tmp_path / "a.npy").stat().st_size


# --- prepare: arrays and manifest ------------------------------------------------------------------

KILLED_PREPARE = """
import dataclasses, sys
from ncil.data.preparation import prepare
from ncil.pipeline import io
from ncil.pipeline.config import load_params

out, seed = sys.argv[1], int(sys.argv[2])
cfg = dataclasses.replace(load_params("params.yaml")[0].dataset, split_seed=seed)
real, calls = io.write_array, []


def write_array(path, array):
    calls.append(path)
    if len(calls) == 3:  # the training images and labels are written; the job dies in the val images
        print("inside the write", flush=True)
        sys.stdin.read()
    real(path, array)


io.write_array = write_array
prepare(cfg, out_dir=out)
"""


@pytest.fixture(scope="module")
def digits():
    return load_params(ROOT / "params.yaml")[0].dataset


def _prepared(root: Path, cfg) -> Path:
    folder = root / paths.data_dir(cfg.name)
    prepare(cfg, out_dir=str(folder))
    return folder


def test_an_interrupted_prepare_leaves_no_manifest_over_a_mix_of_arrays(tmp_path, digits):
    folder = _prepared(tmp_path, digits)
    _kill_when_inside(KILLED_PREPARE, [str(folder), str(digits.split_seed + 1)])
    # New training arrays, old val and test arrays: without a manifest nothing reads them as a data set.
    assert not (folder / paths.MANIFEST_NAME).exists()
    for split in paths.DATA_SPLITS:
        with pytest.raises(io.ArtifactError, match=f"{paths.MANIFEST_NAME}: data manifest not found .*prepare step "
                                                   "did not finish"):
            load_split(digits.name, split, root=str(tmp_path))
    prepare(dataclasses.replace(digits, split_seed=digits.split_seed + 1), out_dir=str(folder))
    assert io.verify_manifest(folder / paths.MANIFEST_NAME)["split_seed"] == digits.split_seed + 1


def test_arrays_and_a_manifest_of_different_prepares_are_refused(tmp_path, digits):
    folder = _prepared(tmp_path, digits)
    old = {p.name: p.read_bytes() for p in folder.iterdir()}
    prepare(dataclasses.replace(digits, split_seed=digits.split_seed + 1), out_dir=str(folder))
    new_manifest = (folder / paths.MANIFEST_NAME).read_bytes()
    test_images = folder / "test_images.npy"

    test_images.write_bytes(old["test_images.npy"])  # a stale array under the new manifest
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(test_images))}: checksum mismatch"):
        load_split(digits.name, "test", root=str(tmp_path))
    (folder / paths.MANIFEST_NAME).write_bytes(old[paths.MANIFEST_NAME])  # the old manifest over new arrays
    for split in ("train", "test"):  # (the test images are the old ones again: their labels are not)
        with pytest.raises(io.ArtifactError, match=f"{split}_(images|labels).npy: checksum mismatch"):
            load_split(digits.name, split, root=str(tmp_path))

    (folder / paths.MANIFEST_NAME).write_bytes(new_manifest)
    test_images.write_bytes(old["test_images.npy"][:-100])
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(test_images))}: size mismatch \\(expected 23104 "
                                               "bytes, found 23004\\); the file is truncated"):
        load_split(digits.name, "test", root=str(tmp_path))


def test_a_split_loads_after_checking_its_own_files_only(tmp_path, digits):
    folder = _prepared(tmp_path, digits)
    train = folder / "train_images.npy"
    data = bytearray(train.read_bytes())
    data[-3] ^= 0x10
    train.write_bytes(bytes(data))
    assert len(load_split(digits.name, "test", root=str(tmp_path)).labels) == 359
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(train))}: checksum mismatch"):
        load_split(digits.name, "train", root=str(tmp_path))


def test_a_file_missing_from_the_manifest_is_refused(tmp_path, digits):
    folder = _prepared(tmp_path, digits)
    manifest = io.read_json(folder / paths.MANIFEST_NAME)
    del manifest["files"]["test_labels.npy"]
    io.write_json(folder / paths.MANIFEST_NAME, manifest)
    with pytest.raises(io.ArtifactError, match="manifest.json: files.test_labels.npy: not listed in the manifest"):
        load_split(digits.name, "test", root=str(tmp_path))


def test_a_prepare_that_would_not_fit_fails_before_touching_the_data(tmp_path, digits, monkeypatch):
    folder = _prepared(tmp_path, digits)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    full = os.statvfs_result((4096, 4096, 100, 1, 1, 100, 10, 10, 0, 255))  # 4 kB free
    monkeypatch.setattr(os, "statvfs", lambda path: full)
    with pytest.raises(io.ArtifactError, match="train_images.npy: cannot write \\(No space left on device: the "
                                               "outputs beside it need"):
        prepare(dataclasses.replace(digits, split_seed=digits.split_seed + 1), out_dir=str(folder))
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == before
