"""`make gpu-check` (scripts/gpu_check.py) on the CPU, and the pure pieces it stands on (ncil.learning.flops, ncil.pipeline.plainconf).

The script's GPU numbers can only come from a GPU; here it runs with ``--device cpu`` at its reduced
size, with Hydra, omegaconf, Snakemake and DVC made unimportable (as on the lent GPU machine), and the
report must say cpu wherever a reader could take it for a GPU result.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from ncil.learning import flops
from ncil.pipeline import plainconf
from ncil.pipeline.config import ModelConfig, parse_params
from tests.conftest import ROOT, env

BLOCKED = ("hydra", "omegaconf", "snakemake", "dvc")
N_GPU_TESTS = 21  # tests/test_gpu.py: 1 autocast + 4 augmentation specs + 5 determinism (size x mode)
# + 2 compiled/graphed vs eager + 3 methods x (syncs with dynamic and with static shapes, graph breaks and cudagraph skips)


def blocker(folder) -> str:
    """A folder of packages that refuse to import: first on PYTHONPATH, it hides the venv's."""
    for name in BLOCKED:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked: the GPU check must run without it')\n")
    return str(folder)


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "report.json"
    e = env()
    e["PYTHONPATH"] = blocker(tmp / "blocked")
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--sizes", "32,224",
                           "--out", str(out)], cwd=ROOT, env=e, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_cpu_run_reports_cpu_everywhere(cpu_report):
    report, stdout = cpu_report
    assert report["device"]["device"] == "cpu" and "NOT a GPU result" in report["device"]["note"]
    assert report["device"]["peak_tflops"] is None  # no utilisation is claimed for a CPU
    assert report["torch"] == torch.__version__
    table = stdout[stdout.index("device:"):]
    assert "(cpu, reduced size: NOT a GPU result)" in table.splitlines()[0]
    assert "| cpu: task 1 | image | mode |" in table
    assert "| cpu: hours per paper run (step times of the reduced CPU model: NOT a GPU projection)" in table
    assert "cuda" not in table.split("\n", 1)[1]  # below the header line (torch's version names its CUDA build)


@pytest.mark.slow
def test_cpu_run_counts_the_gpu_tests_as_skipped(cpu_report):
    tests = report_tests = cpu_report[0]["gpu_tests"]
    assert (tests["passed"], tests["failed"], tests["errors"], tests["skipped"]) == (0, 0, 0, N_GPU_TESTS)
    assert all("CUDA" in c["message"] for c in report_tests["cases"])


@pytest.mark.slow
def test_cpu_run_times_the_real_training_task(cpu_report):
    rows = cpu_report[0]["timings"]
    # Every method at 32x32, then ours at 224x224; eager only on the CPU (compiled and graphs need a GPU).
    assert [(r["method"], r["image_size"], r["mode"], r["deterministic"]) for r in rows] == [
        ("ours", 32, "eager", True), ("ours_official", 32, "eager", True), ("pass_resnet18", 32, "eager", True),
        ("ours", 224, "eager", True)]
    for r in rows:
        assert r["batch"] == 8 and len(r["epoch_s"]) == r["epochs"] == 2 and r["compile"] is False
        assert r["images_per_s"] == pytest.approx(8 / (r["step_ms"] / 1e3))
        assert 0 < r["data_path_share"] < 1 and r["peak_memory_mib"] is None
        assert r["losses_finite"] and len(r["losses"]) == 2
        assert r["aten_ops_per_step"] > 100 and r["op_counts"]["steps_counted"] == 2  # ncil.learning.opcount, 2 epochs x 2 steps
    for r in (rows[0], rows[3]):  # the ViT rows: the analytic FLOP count
        model = ModelConfig(name="vit", img_size=r["image_size"], patch_size=r["patch_size"], **r["model"])
        n_out = 4 * (4 + 2)  # rotations x (old + new classes) of the reduced task
        assert r["rows_per_step"] == 32
        assert r["flop_per_step"] == flops.step_flops(flops.forward_flops(model), 32, 8, 4, n_out, True, 40)
        assert r["achieved_tflops"] == pytest.approx(r["flop_per_step"] / (r["step_ms"] / 1e3) / 1e12)
    assert (rows[0]["tokens"], rows[3]["tokens"]) == (64, 196)
    assert rows[1]["flop_per_step"] is None and rows[1]["backbone"] == "hybrid" and rows[1]["precision"] == "fp32"
    # No host sync inside a step (issue 21), but the official preset's mixup row count (one nonzero) and its
    # strong view's colour jitter (ncil/data: the group sizes, and one_hot's range check).
    assert [r["syncs_per_step"] for r in rows] == [0, 4, 0, 0]
    sites = rows[1]["op_counts"]["syncs_by_site"]
    assert sum(n for site, n in sites.items() if site.startswith("nonzero at ncil/methods/mixup.py:")) == 1


@pytest.mark.slow
def test_cpu_run_projects_every_paper_setting(cpu_report):
    projection = cpu_report[0]["projection"]
    assert [(h["dataset"], h["setting"]) for h in projection] == [
        ("cifar100", "50+10x5"), ("cifar100", "50+5x10"), ("cifar100", "40+3x20"),
        ("tinyimagenet", "100+20x5"), ("tinyimagenet", "100+10x10"), ("tinyimagenet", "100+5x20"),
        ("imagenet_subset", "50+5x10"), ("imagenet_subset", "50+10x5"), ("imagenet_subset", "40+3x20")]
    cifar = projection[0]
    # 500 training images a class (the reported grid carves no validation), 400 epochs a task, batch 64:
    # 400 x ceil(25,000 / 64) + 5 x 400 x ceil(5,000 / 64) = 400 x 391 + 2,000 x 79
    assert cifar["train_images_per_class"] == 500 and cifar["epochs"] == [400, 400]
    assert cifar["steps"] == 400 * math.ceil(50 * 500 / 64) + 5 * 400 * math.ceil(10 * 500 / 64) == 314_400
    assert projection[6]["epochs"] == [160, 400]  # ImageNet-Subset's SGD base task (method-spec 5.6)
    assert list(cifar["hours"]) == ["ours eager", "ours_official eager", "pass_resnet18 eager"]  # only what was timed
    step_ms = {r["method"]: r["step_ms"] for r in cpu_report[0]["timings"] if r["image_size"] == 32}
    for method, ms in step_ms.items():
        assert cifar["hours"][f"{method} eager"] == pytest.approx(314_400 * ms / 3.6e6)
    assert projection[3]["hours"]["ours eager"] is None  # 64x64 was not timed (--sizes 32,224)
    assert projection[6]["hours"]["ours eager"] is not None and projection[6]["hours"]["ours_official eager"] is None


def gpu_check_module():
    """scripts/gpu_check.py imported as a module (its main() is not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_without_a_gpu_is_refused_before_any_work(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as stop:
        gpu_check_module().parse_args([])  # --device cuda is the default
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available on this machine" in err and "--device cpu" in err


def test_unknown_image_size_is_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check_module().parse_args(["--device", "cpu", "--sizes", "32,48"])
    assert "--sizes: no paper experiment at side 48 (expected of [32, 64, 224])" in capsys.readouterr().err


def test_junit_outcomes():
    text = """<testsuites><testsuite>
      <testcase name="a" time="1.5"/>
      <testcase name="b" time="0.1"><failure message="assert 1 == 2">trace</failure></testcase>
      <testcase name="c" time="0"><skipped message="needs a CUDA device"/></testcase>
      <testcase name="d" time="0"><error message="fixture broke"/></testcase>
    </testsuite></testsuites>"""
    cases = gpu_check_module().parse_junit(text)
    assert [(c["name"], c["outcome"], c["message"]) for c in cases] == [
        ("a", "passed", ""), ("b", "failed", "assert 1 == 2"), ("c", "skipped", "needs a CUDA device"),
        ("d", "errors", "fixture broke")]
    assert cases[0]["seconds"] == 1.5


# --- ncil.learning.flops ---------------------------------------------------------------------------------------

def test_vit_forward_flops_by_hand():
    parts = flops.vit_forward_flops(32, 4, 384, 5, 12, 4.0)
    assert parts["patch_embed"] == 2 * 64 * 48 * 384 == 2_359_296
    # per GPSA block: 24 N D^2 (qk, v, proj, MLP) + 4 N^2 D (two products) + 6 H N^2 (positional projection)
    assert parts["gpsa_blocks"] == 5 * (24 * 64 * 384**2 + 4 * 64**2 * 384 + 6 * 12 * 64**2) == 1_165_393_920
    assert parts["class_attention"] == (20 + 4 * 65) * 384**2 + 4 * 65 * 384 == 41_387_520
    assert parts["total"] == 1_209_140_736  # method-spec 9.1: 1.209 GFLOP


@pytest.mark.parametrize("img,patch", [(32, 4), (64, 8), (224, 16)])
def test_vit_forward_flops_match_torch_flop_counter(img, patch):
    """The paper's three geometries (N = 64, 64, 196 tokens) on a narrower, shallower ViT (the count is
    per layer, so width and depth only scale its terms; the paper sizes are checked by hand above)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ncil.models.vit import ViT

    cfg = ModelConfig(name="vit", img_size=img, patch_size=patch, embed_dim=48, depth=2, num_heads=4, mlp_ratio=3.0)
    net = ViT(cfg, 3).eval()
    with FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, img, img))
    n, d = (img // patch) ** 2, cfg.embed_dim
    # torch's counter does not see the class attention's two one-query products when SDPA runs its CPU
    # kernel (4 (N + 1) D FLOP); where it does see them, the counts are equal.
    assert counter.get_total_flops() in (flops.forward_flops(cfg), flops.forward_flops(cfg) - 4 * (n + 1) * d)


def test_step_and_setting_flops_by_hand():
    # rows 4 x 2 = 8; backbone 3 x 8 x 100; head 3 x 8 x (2 x 2 x 8) on 8 outputs
    assert flops.step_flops(100, 2, 2, 4, 8, teacher=False) == 2400 + 768
    # with the teacher (8 x 100) and 10 more head rows on 12 outputs
    assert flops.step_flops(100, 2, 2, 4, 12, teacher=True, extra_head_rows=10) == 2400 + 800 + 3 * 18 * 48
    assert flops.task_steps([50, 10], 450, 64, [400, 400]) == [400 * 352, 400 * 71]
    # two tasks of 2 and 1 classes, 1 image a class, batch 2: one step each; task 1 adds (4 + 1) x 2 head rows
    assert flops.setting_flops([2, 1], 1, 2, [1, 1], forward=100, embed_dim=2) == 3168 + 2400 + 800 + 3 * 18 * 48


@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA H100 80GB HBM3", 989.5), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.5), ("NVIDIA H200 NVL", 835.5), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L40S", 362.05), ("NVIDIA L4", 121.0), ("NVIDIA A10", 125.0),
    ("NVIDIA A10G", None), ("NVIDIA L40", None), ("NVIDIA GeForce RTX 4090", None)])
def test_known_peaks_match_whole_names(name, tflops):
    peak = flops.known_peak(name)
    assert (peak.tflops if peak else None) == tflops


def test_hours():
    assert flops.hours(3.6e15, 1e12) == 1.0 and flops.hours(1.0, None) is None


# --- ncil.pipeline.plainconf -------------------------------------------------------------------------------------

@pytest.mark.parametrize("experiment", plainconf.PAPER_EXPERIMENTS)
def test_plain_conf_reads_what_hydra_composes(experiment):
    from ncil.pipeline.hydra_conf import compose

    hydra = compose([f"+experiment={experiment}"])
    exp = plainconf.paper_experiment(experiment)
    plain = plainconf.compose_params(exp["dataset"], exp["model"], exp["train"], "ours", exp["scenarios"],
                                     overrides=exp["overrides"])
    assert exp["overrides"] == {"dataset": {"val_fraction": 0.0}}  # the paper trains on every training image
    for section in ("order_seed", "seeds", "dataset", "model", "train", "runtime"):
        assert plain[section] == hydra[section], section
    # the one-method grid is the paper preset's; Hydra's grid is mixed where it also runs fcs / ours_official
    assert plain["preset"] == "paper" and hydra["preset"] == ("mixed" if "fcs" in hydra["method"] else "paper")
    assert plain["scenario"] == hydra["scenario"]
    assert plain["method"]["ours"] == hydra["method"]["ours"]
    parse_params(plain)  # valid as it is


def test_plain_conf_errors_name_the_file(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "x.yaml").write_text("defaults:\n  - override /dataset: cifar100\n")
    with pytest.raises(ValueError, match=r"experiment/x.yaml: defaults: no override of model, train, scenario"):
        plainconf.paper_experiment("x", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model/nope.yaml: no such config file"):
        plainconf.group_option("model", "nope", tmp_path)


def test_the_default_gpu_mode_is_the_fastest_whose_determinism_and_same_training_tests_passed():
    """Issue 21 item 8: ``recommended_mode`` reads the gpu tests' outcomes and the ``ours`` 32x32 step times."""
    gc = gpu_check_module()
    passed = [{"name": name, "outcome": "passed"} for names in gc.MODE_TESTS.values() for name in names]
    timings = [{"method": "ours", "image_size": 32, "deterministic": True, "mode": m, "step_ms": ms}
               for m, ms in (("eager", 56.9), ("compiled", 41.8), ("graphs", 14.0))]
    timings += [{"method": "ours", "image_size": 32, "deterministic": False, "mode": "eager", "step_ms": 5.0},
                {"method": "ours", "image_size": 224, "deterministic": True, "mode": "eager", "step_ms": 1.0}]
    report = {"gpu_tests": {"cases": passed}, "timings": timings}
    rec = gc.recommended_mode(report)
    assert (rec["mode"], rec["step_ms"]) == ("graphs", 14.0)  # the fastest; the det-off and 224 rows do not count
    assert rec["configured"] == "eager"  # conf/runtime/gpu.yaml today (compile: false)
    graphs_224 = "test_two_gpu_runs_give_bit_identical_checkpoints[224-graphs]"
    report["gpu_tests"]["cases"] = [c if c["name"] != graphs_224 else {**c, "outcome": "failed"} for c in passed]
    assert gc.recommended_mode(report)["mode"] == "compiled"  # graphs not bit-exact at 224 px: not eligible
    report["gpu_tests"]["cases"] = [c for c in passed if "same_training" not in c["name"]]
    rec = gc.recommended_mode(report)
    assert rec["mode"] == "eager" and rec["tests"]["compiled"][gc.MODE_TESTS["compiled"][1]] == "not run"
    assert gc.recommended_mode({"gpu_tests": None, "timings": timings})["mode"] is None
    assert "runtime=gpu default" in gc.table({"device": {"device": "cuda", "name": "H200", "peak_tflops": None},
                                              "torch": "2.11", "gpu_tests": None, "timings": [], "projection": [],
                                              "recommended": rec})


def test_the_gpu_rows_come_most_telling_first():
    import argparse

    gc = gpu_check_module()
    args = argparse.Namespace(cuda=True, modes=list(gc.MODES), methods=list(gc.METHODS), sizes=[32, 64, 224])
    rows = gc.plan(args)
    cases = [("ours", 32), ("ours_official", 32), ("pass_resnet18", 32), ("ours", 64), ("ours", 224)]
    assert rows[:10] == [(m, s, mode, True) for m, s in cases for mode in ("eager", "graphs")]
    assert rows[10:] == [(m, s, "compiled", True) for m, s in cases] + [("ours", 32, "eager", False)]


@pytest.mark.parametrize("option, value, message", [
    ("--modes", "eager,warp", "--modes: expected comma-separated names of eager, compiled, graphs, got 'eager,warp'"),
    ("--modes", "graphs", "--modes: only eager runs on the CPU"),
    ("--methods", "ours,lwf", "--methods: expected comma-separated names of ours, ours_official, pass_resnet18"),
])
def test_unknown_modes_and_methods_are_refused(capsys, option, value, message):
    gc = gpu_check_module()
    with pytest.raises(SystemExit) as stop:
        gc.parse_args(["--device", "cpu", option, value])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("method", ["ours_official", "fcs"])
def test_plain_conf_reads_the_official_methods_as_hydra_composes_them(method):
    from ncil.pipeline.hydra_conf import compose

    plain = parse_params(plainconf.compose_params("cifar100", "vit_paper", "paper", method), source="plain")
    assert plain.method[method] == parse_params(compose(["preset=official"])).method[method]
    assert plain.preset == "official" and plain.method[method].backbone == "hybrid"
