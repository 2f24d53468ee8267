"""`make gpu-check`: the GPU path proven in one short command (GPU tests, timed training steps, a report).

    python3 scripts/gpu_check.py                      # on a GPU machine: about 6 minutes, no data set needed
    python3 scripts/gpu_check.py --device cpu         # anywhere: reduced sizes, the report says device cpu

1. Runs the tests marked ``gpu`` (``tests/test_gpu.py``; all skipped without CUDA) in a pytest subprocess
   and counts them in the report.
2. Times ``ncil.learning.training.train_task`` itself, task 1 of a method (``ours``: the paper preset's ViT, 4 rotations,
   the teacher's forward, PKS, PR, prototype augmentation, bf16 autocast on CUDA; ``ours_official``: the
   official preset's hybrid, mixup, key encoder, fp32; ``pass_resnet18``) on synthetic images shaped like
   CIFAR-100 (32x32, batch 64), and ``ours`` also like TinyImageNet (64x64) and ImageNet-Subset (224x224),
   in each ``runtime.compile`` mode: eager (false), compiled (true) and graphs (CUDA graphs). A row trains
   1 warm-up epoch (the compilation, the graph captures), 2 timed epochs (the step time is their median
   divided by the steps) and 1 profiled epoch (torch.profiler: CUDA kernels and launches per step, and the
   GPU-busy share: the union of the kernels' and copies' intervals per step over the timed step time).
   Syncs per step are counted in the timed epochs with ``torch.cuda.set_sync_debug_mode("warn")``: every
   warning between the end of one step and the end of the next (each epoch's first step, its set-up and its
   one read of the running sums left out). On the CPU a second, short run counts syncs and aten ops per
   step with ``ncil.learning.opcount``. The graphs rows train with ``runtime.static_shapes: true`` (the official step's
   mixup rows masked, not compacted: one input shape, no sync); the others with ``--static-shapes`` (default
   auto: compacted, as the default grid). The data path (index_select + ``augment_batch``) is timed alone over the same
   batches; its share is that time over the step time.
3. Writes one JSON report (``--out``) and prints a table: device, torch version, per row the step time,
   images/s, syncs, kernels, the busy share, the data-path share, peak memory and, for the ViT rows, the
   achieved FLOP/s (``ncil.learning.flops``) against the device's dense bf16 peak (``ncil.learning.flops.DEVICE_PEAKS`` or
   ``--peak-tflops``); then the hours per paper run of each timed method and mode (both presets): the
   setting's optimisation steps (the schedules of ``conf/experiment/{cifar100,tinyimagenet,imagenet_subset}.yaml``)
   times the measured step time at its image size.

It needs only this package, torch, timm, numpy, pyyaml and pytest: no Hydra, omegaconf, Snakemake or
DVC (``ncil.pipeline.plainconf`` reads ``conf/`` as plain YAML), so it runs on a lent GPU machine as it is.
CUBLAS_WORKSPACE_CONFIG=:4096:8 is set before torch loads (cuBLAS's deterministic mode; see
tests/test_gpu.py), in this process and the tests'.

The device command (the lent H200 of this workplace; one `run` call, 600 s limit, the report and the
log come back under $OUT):

    set -o pipefail; PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out $OUT/gpu_check.json \
        --max-minutes 6 2>&1 | tee $OUT/gpu_check.log        # run(..., timeout_s=600)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# cuBLAS reads this once, when it creates its first handle: set before torch can touch the GPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

from ncil.data import arrays, augment  # noqa: E402
from ncil.data.catalog import DATASETS, class_split_counts  # noqa: E402
from ncil.data.scenario import task_sizes  # noqa: E402
from ncil.learning import flops, optim, runtime, synthetic, training  # noqa: E402
from ncil.pipeline import io, plainconf
from ncil.pipeline.config import TrainConfig, parse_params, parse_section  # noqa: E402
from ncil.pipeline.progress import EpochProgress  # noqa: E402

METHODS = ("ours", "ours_official", "pass_resnet18")  # the paper preset's method, the official one, PASS
MODES = {"eager": False, "compiled": True, "graphs": "graphs"}  # row mode -> runtime.compile
# ImageNet-Subset's classes hold 732..1,300 training images (ncil.data.catalog); the projection takes 1,300.
NOMINAL_CLASS_IMAGES = {"imagenet_subset": 1300}
# CPU runs (--device cpu): the paper's image and patch sizes with a shrunken ViT (and ResNet), batch 8.
REDUCED_MODEL = {"embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}
REDUCED_RESNET_WIDTH = 8
SYNC_WARNING = "synchroniz"  # torch.cuda.set_sync_debug_mode("warn"): "called a synchronizing CUDA operation"
EPOCHS = {"warmup": 1, "timed": 2, "profiled": 1}  # a CUDA row's epochs, in this order


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (reduced sizes)")
    ap.add_argument("--out", default="benchmarks/gpu_check/report.json", help="JSON report to write")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense bf16 peak in TFLOP/s (default: ncil.learning.flops.DEVICE_PEAKS by device name)")
    ap.add_argument("--modes", default=None,
                    help=f"runtime.compile modes to time, of {','.join(MODES)} (default: all on CUDA, eager on the CPU)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"methods timed at 32x32, of {','.join(METHODS)}")
    ap.add_argument("--sizes", default="32,64,224", help="image sides to time `ours` at, of 32, 64, 224")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the gpu-marked tests")
    ap.add_argument("--static-shapes", default="auto", choices=("auto", "true", "false"),
                    help="runtime.static_shapes of the eager and compiled rows (default auto: the compacted "
                         "official step, as the default grid trains); the graphs rows always use true")
    ap.add_argument("--max-minutes", type=float, default=6.0,
                    help="skip the remaining timings once this much time has passed (they are reported as skipped)")
    args = ap.parse_args(argv)
    args.cuda = args.device.startswith("cuda")
    args.static_shapes = {"auto": "auto", "true": True, "false": False}[args.static_shapes]
    if args.cuda and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available on this machine (torch {torch.__version__}); "
                 "use --device cpu for the reduced CPU run")
    args.modes = _names(ap, "--modes", args.modes or (",".join(MODES) if args.cuda else "eager"), MODES)
    if not args.cuda and args.modes != ["eager"]:
        ap.error(f"--modes: only eager runs on the CPU (compiled and graphs are timed on a GPU), got {','.join(args.modes)}")
    args.methods = _names(ap, "--methods", args.methods, METHODS)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes: expected comma-separated image sides, got {args.sizes!r}")
    unknown = sorted(set(args.sizes) - set(sizes_of_experiments()))
    if unknown:
        ap.error(f"--sizes: no paper experiment at side {unknown[0]} (expected of {sorted(sizes_of_experiments())})")
    return args


def _names(ap, option: str, text: str, known) -> list[str]:
    names = [n for n in text.split(",") if n]
    bad = [n for n in names if n not in known]
    if bad or not names:
        ap.error(f"{option}: expected comma-separated names of {', '.join(known)}, got {text!r}")
    return names


def image_size(experiment: str) -> int:
    return int(plainconf.group_option("dataset", plainconf.paper_experiment(experiment)["dataset"])["image_size"])


def sizes_of_experiments() -> dict[int, str]:
    """Image side -> the paper experiment (conf/experiment/<name>.yaml) at that side."""
    return {image_size(name): name for name in plainconf.PAPER_EXPERIMENTS}


# --- the workload ----------------------------------------------------------------------------------

def shape(args) -> dict:
    """Batch, classes and steps per epoch of the timed task: CIFAR-100 50+10's first increment on a GPU."""
    if args.cuda:
        return {"batch": 64, "n_old": 50, "n_new": 10, "steps": {32: 12, 64: 6, 224: 4}, "epochs": sum(EPOCHS.values())}
    return {"batch": 8, "n_old": 4, "n_new": 2, "steps": {32: 2, 64: 2, 224: 2}, "epochs": 2}


def static_shapes_of(mode: str, args) -> bool | str:
    """``runtime.static_shapes`` of a row: true in the graphs rows (a CUDA graph per input shape would otherwise
    be captured at every new mixup row count; issue 21), ``--static-shapes`` in the others (default auto:
    the compacted rows of the default grid)."""
    return True if mode == "graphs" else args.static_shapes


def params_for(experiment: str, args, mode: str, epochs: int, batch: int, method: str = "ours"):
    exp = plainconf.paper_experiment(experiment)
    overrides = {section: dict(keys) for section, keys in exp["overrides"].items()}  # the experiment's own keys
    overrides["train"] = {**overrides.get("train", {}), "epochs": epochs, "batch_size": batch, "lr_step": 0}
    overrides["runtime"] = {**overrides.get("runtime", {}), "device": args.device,
                            "threads": 4 if args.cuda else 1, "compile": MODES[mode],
                            "static_shapes": static_shapes_of(mode, args)}
    if not args.cuda:
        overrides["model"] = {**overrides.get("model", {}), **REDUCED_MODEL, "resnet_width": REDUCED_RESNET_WIDTH}
    data = plainconf.compose_params(exp["dataset"], exp["model"], exp["train"], method, exp["scenarios"][:1],
                                    overrides=overrides)
    return parse_params(data, source=f"conf/experiment/{experiment}.yaml (plain YAML, scripts/gpu_check.py)")


class Measured:
    """What a row records while ``train_task`` runs: epoch seconds, sync warnings per step, a profile."""

    def __init__(self, cuda: bool, profile_epoch: int | None, count_epochs: range):
        self.cuda, self.profile_epoch, self.count_epochs = cuda, profile_epoch, count_epochs
        self.seconds: list[float] = []
        self.warnings: list = []  # filled by warnings.catch_warnings(record=True)
        self.syncs = self.windows = 0
        self.profile = None

    def progress_class(self):
        measured = self

        class Recorder(EpochProgress):
            def start_epoch(self):
                epoch = len(measured.seconds)
                measured.in_window = False
                if measured.cuda:
                    torch.cuda.set_sync_debug_mode("warn" if epoch in measured.count_epochs else "default")
                if epoch == measured.profile_epoch:
                    measured.profile = torch.profiler.profile(activities=[
                        torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
                    measured.profile.__enter__()
                    measured.profiled_steps = 0
                return super().start_epoch()

            def step(self, loss, batch, correct):
                super().step(loss, batch, correct)
                if measured.in_window and len(measured.seconds) in measured.count_epochs:
                    # the window since the last step's end: one whole step
                    measured.syncs += sum(SYNC_WARNING in str(w.message) for w in measured.warnings[measured.mark:])
                    measured.windows += 1
                measured.mark, measured.in_window = len(measured.warnings), True
                if measured.profile is not None and len(measured.seconds) == measured.profile_epoch:
                    measured.profiled_steps += 1

            def end_epoch(self, epoch, lr):
                if measured.cuda:
                    torch.cuda.set_sync_debug_mode("default")
                    torch.cuda.synchronize()
                measured.seconds.append(time.perf_counter() - self.t0)
                if measured.profile is not None and len(measured.seconds) - 1 == measured.profile_epoch:
                    measured.profile.__exit__(None, None, None)
                return super().end_epoch(epoch, lr)

        return Recorder


@contextlib.contextmanager
def measuring(measured: Measured):
    """Within: ``ncil.learning.training`` builds ``measured``'s progress class (the training code offers no hook, so the
    name is swapped for the duration; nothing else of the loop changes) and warnings are recorded."""
    saved = training.EpochProgress
    training.EpochProgress = measured.progress_class()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            measured.warnings = caught
            yield measured
    finally:
        training.EpochProgress = saved
        if measured.cuda:
            torch.cuda.set_sync_debug_mode("default")


def profile_summary(prof, steps: int) -> dict:
    """Per step: CUDA kernels, kernel launches (host calls, a CUDA-graph replay counts one), and the GPU's busy
    milliseconds (the union of kernel and copy intervals)."""
    device_events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = [e for e in device_events if not e.name.startswith(("Memcpy", "Memset"))]
    launches = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU
                and e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                               "cudaGraphLaunch")]
    busy, end = 0.0, -math.inf
    for start, stop in sorted((e.time_range.start, e.time_range.end) for e in device_events):
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    steps = max(steps, 1)
    return {"kernels_per_step": len(kernels) / steps, "launches_per_step": len(launches) / steps,
            "gpu_busy_ms_per_step": busy / 1e3 / steps}


@contextlib.contextmanager
def deterministic(enabled: bool):
    """``runtime.setup`` as it is (deterministic algorithms on), or followed by switching them off."""
    if enabled:
        yield
        return
    saved = runtime.setup

    def setup_nondeterministic(*a, **k):
        out = saved(*a, **k)
        torch.use_deterministic_algorithms(False)
        return out

    runtime.setup = setup_nondeterministic
    try:
        yield
    finally:
        runtime.setup = saved


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_data_path(p, split, device: torch.device, batch: int, epochs: int) -> float:
    """Seconds per batch of the loop's data path alone: gather a uint8 batch on the device, augment it."""
    x_all = arrays.to_uint8_tensor(split.images).to(device)
    spec = augment.spec_from_dataset(p.dataset)
    generator = torch.Generator(device=device)
    generator.manual_seed(0)

    def one_epoch() -> int:
        n = 0
        for idx in training.epoch_order(len(x_all), batch, training.torch_cpu_generator(generator), device):
            augment.augment_batch(x_all.index_select(0, idx), spec, generator)
            n += 1
        return n

    one_epoch()  # warm-up
    sync(device)
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        n += one_epoch()
    sync(device)
    return (time.perf_counter() - start) / n


def _quiet_logger() -> logging.Logger:
    log = logging.getLogger("ncil.gpu_check")
    log.handlers[:] = [logging.NullHandler()]
    log.propagate = False
    return log


def count_ops(experiment: str, args, method: str) -> dict:
    """Syncs and aten ops per step (``ncil.learning.opcount``) of a short eager run: 2 epochs of 2 steps."""
    from ncil.learning import opcount

    s = shape(args)
    p = params_for(experiment, args, "eager", 2, s["batch"], method)
    job, split, previous, centers = synthetic.incremental_task(p, method, s["n_old"], s["n_new"], 2 * s["batch"] // s["n_new"])
    _, counts = opcount.count_training_steps(training.train_task, p, job, split, previous, centers, _quiet_logger())
    return counts.summary()


def time_training(experiment: str, args, mode: str, deterministic_on: bool = True, method: str = "ours") -> dict:
    """One timed ``train_task`` of ``method``'s task 1 at the experiment's image size in ``mode``."""
    s = shape(args)
    size = image_size(experiment)
    epochs, steps, batch = s["epochs"], s["steps"][size], s["batch"]
    p = params_for(experiment, args, mode, epochs, batch, method)
    per_class = steps * batch // s["n_new"]
    job, split, previous, centers = synthetic.incremental_task(p, method, s["n_old"], s["n_new"], per_class)
    device = runtime.resolve_device(p.runtime.device)
    if mode != "eager":
        import torch._dynamo as dynamo  # (binds dynamo only: a bare `import torch._dynamo` would make torch local)

        dynamo.reset()  # compile afresh, as a training job does (no graphs or dynamic shapes of another size)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    timed = range(EPOCHS["warmup"], EPOCHS["warmup"] + EPOCHS["timed"]) if args.cuda else range(1, epochs)
    measured = Measured(device.type == "cuda", EPOCHS["warmup"] + EPOCHS["timed"] if args.cuda else None, timed)
    sync(device)
    start = time.perf_counter()
    with measuring(measured), deterministic(deterministic_on):
        payload, _ = training.train_task(p, job, split, previous, centers, _quiet_logger())
    sync(device)
    wall = time.perf_counter() - start
    seconds = measured.seconds
    steady = statistics.median([seconds[e] for e in timed])
    step_s = steady / steps
    data_s = time_data_path(p, split, device, batch, epochs=max(1, len(timed)))
    method_cfg = p.method[method]
    rot = 4 if method_cfg.rotation else 1
    vit = method_cfg.backbone == "vit"
    flop = None
    if vit:
        n_out = rot * (s["n_old"] + s["n_new"])
        flop = flops.step_flops(flops.forward_flops(p.model), p.model.embed_dim, batch, rot, n_out, teacher=True,
                                extra_head_rows=(rot + 1) * batch)
    losses = [h["loss"] for h in payload["history"]]
    row = {
        "method": method, "preset": method_cfg.preset, "backbone": method_cfg.backbone, "mode": mode,
        "experiment": experiment, "image_size": size, "patch_size": p.model.patch_size,
        "tokens": (size // p.model.patch_size) ** 2, "model": {k: getattr(p.model, k) for k in REDUCED_MODEL},
        "batch": batch, "rows_per_step": rot * batch, "compile": MODES[mode], "deterministic": deterministic_on,
        "precision": payload["config"]["runtime"]["precision"],
        "static_shapes": payload["config"]["runtime"].get("static_shapes", False),  # recorded only when true
        "epochs": epochs, "steps_per_epoch": steps, "epoch_s": seconds,
        "step_ms": 1e3 * step_s, "images_per_s": batch / step_s,
        "data_path_ms": 1e3 * data_s, "data_path_share": data_s / step_s,
        "warmup_s": seconds[0] - steady,  # the first epoch's extra time: compilation, graph captures, cuDNN choice
        "task_wall_s": wall,
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "flop_per_step": flop, "achieved_tflops": flop / step_s / 1e12 if flop else None,
        "losses": losses, "losses_finite": all(math.isfinite(v) for v in losses),
        "syncs_per_step": measured.syncs / measured.windows if device.type == "cuda" and measured.windows else None,
    }
    if measured.profile is not None:
        try:
            prof = profile_summary(measured.profile, measured.profiled_steps)
            row.update(prof, gpu_busy_share=prof["gpu_busy_ms_per_step"] / row["step_ms"])
        except Exception as err:  # noqa: BLE001 (a profiler quirk must not cost the row its timing)
            row["profile_error"] = f"{type(err).__name__}: {err}"[:500]
    if device.type == "cpu":
        counts = count_ops(experiment, args, method)
        row.update(syncs_per_step=counts["syncs_per_step"], aten_ops_per_step=counts["aten_ops_per_step"],
                   op_counts=counts)
    return row


# --- GPU tests --------------------------------------------------------------------------------------

def run_gpu_tests(timeout_s: float) -> dict:
    """``pytest -m gpu tests/test_gpu.py`` in a subprocess; counts and each test's outcome from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py",
               f"--junitxml={xml_path}", "-o", "junit_family=xunit2"]
        start = time.perf_counter()
        try:
            # No third-party pytest plugins: the tests need none, and a machine's own (xdist, cov, ...) stay out.
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
        except subprocess.TimeoutExpired as err:
            return {"command": " ".join(cmd[2:]), "returncode": None, "timed_out": True, "seconds": timeout_s,
                    "passed": 0, "failed": 0, "skipped": 0, "errors": 1, "cases": [],
                    "output_tail": ((err.stdout or "") if isinstance(err.stdout, str) else "")[-3000:]}
        seconds = time.perf_counter() - start
        cases = parse_junit(xml_path.read_text()) if xml_path.exists() else []
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped", "errors")}
    if proc.returncode not in (0, 1, 5) and not counts["errors"]:  # pytest itself failed (usage, collection)
        counts["errors"] = 1
    return {"command": " ".join(cmd[2:]), "returncode": proc.returncode, "timed_out": False, "seconds": seconds,
            **counts, "cases": cases, "output_tail": (proc.stdout + proc.stderr)[-3000:]}


def parse_junit(text: str) -> list[dict]:
    """Each test case of a JUnit XML report: name, outcome (passed/failed/skipped/errors), seconds, message."""
    out = []
    for case in ET.fromstring(text).iter("testcase"):
        outcome, message = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
            node = case.find(tag)
            if node is not None:
                outcome, message = name, (node.get("message") or node.text or "")[:500]
                break
        out.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0.0),
                    "message": message})
    return out


# --- projection -------------------------------------------------------------------------------------

def projected_hours(rows: list[dict], batch: int = 64) -> list[dict]:
    """Hours of one run of every paper setting: its optimisation steps (task 0 and the increments, at ``batch``)
    times the step time measured at its image size, for each timed (method, mode) with deterministic
    algorithms on (``hours``: "method mode" -> hours, None where that size was not timed)."""
    step_ms = {(r["method"], r["mode"], r["image_size"]): r["step_ms"] for r in rows
               if r.get("deterministic", True) and "step_ms" in r}
    timed = sorted({(m, mode) for m, mode, _ in step_ms}, key=lambda k: (METHODS.index(k[0]), list(MODES).index(k[1])))
    out = []
    for name in plainconf.PAPER_EXPERIMENTS:
        exp = plainconf.paper_experiment(name)
        dataset = {**plainconf.group_option("dataset", exp["dataset"]), **exp["overrides"].get("dataset", {})}
        recipe_cfg = parse_section(TrainConfig, plainconf.group_option("train", exp["train"]), "conf/train", "train")
        per_class = DATASETS[dataset["name"]].smallest_class or NOMINAL_CLASS_IMAGES[dataset["name"]]
        train_images = class_split_counts(per_class, 0.0, dataset["val_fraction"])[0]
        for scenario in exp["scenarios"]:
            sc = plainconf.group_option("scenario", scenario)
            sizes = task_sizes(dataset["n_classes"], sc["initial_increment"], sc["increment"])
            epochs = [optim.task_recipe(recipe_cfg, t).epochs for t in range(len(sizes))]
            steps = sum(flops.task_steps(sizes, train_images, batch, epochs))
            size = dataset["image_size"]
            out.append({
                "dataset": dataset["name"], "setting": f"{sizes[0]}+{sizes[1]}x{len(sizes) - 1}", "image_size": size,
                "train_images_per_class": train_images, "epochs": epochs[:2], "steps": steps,
                "hours": {f"{m} {mode}": (steps * step_ms[(m, mode, size)] / 3.6e6 if (m, mode, size) in step_ms else None)
                          for m, mode in timed},
            })
    return out


# Per mode, the gpu tests that must pass before ``runtime=gpu`` may default to it (issue 21 items 3, 4, 8): two
# runs bit-identical (at 32 and/or 224 px) and, for a mode other than eager, the same training within the seed spread.
MODE_TESTS = {
    "eager": ("test_two_gpu_runs_give_bit_identical_checkpoints[32-eager]",
              "test_two_gpu_runs_give_bit_identical_checkpoints[224-eager]"),
    "compiled": ("test_two_gpu_runs_give_bit_identical_checkpoints[224-compiled]",
                 "test_compiled_and_graphed_training_is_the_same_training_within_the_seed_spread[compiled]"),
    "graphs": ("test_two_gpu_runs_give_bit_identical_checkpoints[32-graphs]",
               "test_two_gpu_runs_give_bit_identical_checkpoints[224-graphs]",
               "test_compiled_and_graphed_training_is_the_same_training_within_the_seed_spread[graphs]"),
}


def configured_gpu_mode() -> str:
    """The ``runtime.compile`` that conf/runtime/gpu.yaml gives ``runtime=gpu`` today, as a mode name."""
    value = plainconf.group_option("runtime", "gpu")["compile"]
    return next(name for name, setting in MODES.items() if setting == value)


def recommended_mode(report: dict) -> dict:
    """The fastest ``runtime.compile`` mode (``ours`` at 32x32, deterministic) whose ``MODE_TESTS`` all passed in
    this run: what conf/runtime/gpu.yaml should give ``runtime=gpu`` (issue 21 item 8). ``mode`` None when no
    mode qualifies (no tests ran, or none passed)."""
    outcomes = {c["name"]: c["outcome"] for c in (report.get("gpu_tests") or {}).get("cases", [])}
    step = {r["mode"]: r["step_ms"] for r in report["timings"]
            if r.get("method") == "ours" and r.get("image_size") == 32 and r.get("deterministic") and "step_ms" in r}
    verdicts = {mode: {name: outcomes.get(name, "not run") for name in names} for mode, names in MODE_TESTS.items()}
    qualified = [m for m, v in verdicts.items() if m in step and all(o == "passed" for o in v.values())]
    best = min(qualified, key=step.get, default=None)
    return {"mode": best, "step_ms": step.get(best), "configured": configured_gpu_mode(), "tests": verdicts,
            "step_ms_by_mode": step}


# --- report -----------------------------------------------------------------------------------------

def device_info(args) -> dict:
    if args.cuda:
        device = torch.device(args.device)
        props = torch.cuda.get_device_properties(device)
        name = torch.cuda.get_device_name(device)
        peak = flops.known_peak(name)
        return {"device": "cuda", "name": name, "memory_gib": props.total_memory / 2**30,
                "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "peak_tflops": args.peak_tflops or (peak.tflops if peak else None),
                "peak_source": "--peak-tflops" if args.peak_tflops else (peak.source if peak else None)}
    return {"device": "cpu", "name": platform.processor() or platform.machine(), "threads": 1,
            "peak_tflops": args.peak_tflops, "peak_source": "--peak-tflops" if args.peak_tflops else None,
            "note": "CPU run at reduced size (a shrunken ViT, batch 8): NOT a GPU result"}


def _fmt(value, spec: str = ".1f", scale: float = 1.0, suffix: str = "") -> str:
    return "-" if value is None else f"{scale * value:{spec}}{suffix}"


def table(report: dict) -> str:
    d = report["device"]
    peak = d.get("peak_tflops")
    cuda = d["device"] == "cuda"
    tag = "cuda" if cuda else "cpu, reduced size: NOT a GPU result"
    peak_text = f"{peak:g} TFLOP/s ({d['peak_source']})" if peak else "unknown (give --peak-tflops)"
    lines = [f"device: {d['name']} ({tag}); torch {report['torch']}; dense bf16 peak: {peak_text}"]
    t = report["gpu_tests"]
    if t:
        lines.append(f"gpu tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
                     f"{t['skipped']} skipped ({t['seconds']:.0f} s)")
    ops = "kernels/step | launches/step | GPU busy" if cuda else "aten ops/step"
    lines += ["", f"| {d['device']}: task 1 | image | mode | deterministic | step ms | images/s | syncs/step | {ops} | "
                  "data path | peak MiB | TFLOP/s | of peak |",
              "|---|---|---|---|---|---|---|---|" + ("---|---|" if cuda else "") + "---|---|---|---|"]
    width = 12 if cuda else 10
    for r in report["timings"]:
        head = (f"| {r['method']} | {r['image_size']}x{r['image_size']} | {r['mode']} | "
                f"{'on' if r['deterministic'] else 'off'} |")
        if "error" in r or "skipped" in r:
            text = f"FAILED: {r['error'][:120]}" if "error" in r else f"skipped: {r['skipped']}"
            lines.append(f"{head} {text} |" + " |" * (width - 5))
            continue
        mem = _fmt(r["peak_memory_mib"], ".0f")
        util = f"{100 * r['achieved_tflops'] / peak:.1f}%" if peak and r["achieved_tflops"] else "-"
        counted = (f"{_fmt(r.get('kernels_per_step'), '.0f')} | {_fmt(r.get('launches_per_step'), '.0f')} | "
                   f"{_fmt(r.get('gpu_busy_share'), '.0f', 100, '%')}" if cuda else _fmt(r.get("aten_ops_per_step"), ".0f"))
        lines.append(f"{head} {r['step_ms']:.2f} | {r['images_per_s']:.0f} | {_fmt(r.get('syncs_per_step'))} | "
                     f"{counted} | {100 * r['data_path_share']:.1f}% | {mem} | {_fmt(r['achieved_tflops'], '.3g')} | "
                     f"{util} |")
    rates = "measured step times" if cuda else "step times of the reduced CPU model: NOT a GPU projection"
    projection = report["projection"]
    columns = list(projection[0]["hours"]) if projection else []
    lines += ["", f"| {d['device']}: hours per paper run ({rates}) | steps | " + " | ".join(columns) + " |",
              "|---|---|" + "---|" * len(columns)]
    for h in projection:
        lines.append(f"| {h['dataset']} {h['setting']} | {h['steps']} | "
                     + " | ".join(_fmt(h["hours"][c], ".2f") for c in columns) + " |")
    rec = report.get("recommended")
    if rec:
        best = rec["mode"] or "none qualifies"
        lines += ["", f"runtime=gpu default (fastest mode whose determinism and same-training tests passed): {best}; "
                      f"conf/runtime/gpu.yaml has {rec['configured']}"
                  + ("" if rec["mode"] in (None, rec["configured"]) else " -> change runtime.compile there")]
    return "\n".join(lines)


def plan(args) -> list[tuple[str, int, str, bool]]:
    """(method, image side, mode, deterministic) of every row, most telling first: eager and graphs of each
    method at 32x32 and of ``ours`` at the other sizes, then the compiled rows, then 32x32 eager without
    deterministic algorithms (their cost)."""
    cases = [("ours", 32)] if 32 in args.sizes or not args.sizes else []
    cases += [(m, 32) for m in args.methods if m != "ours"]
    cases += [("ours", size) for size in args.sizes if size != 32]
    if "ours" not in args.methods:
        cases = [c for c in cases if c[0] != "ours"]
    rows = [(m, size, mode, True) for m, size in cases for mode in ("eager", "graphs") if mode in args.modes]
    rows += [(m, size, "compiled", True) for m, size in cases if "compiled" in args.modes]
    if args.cuda and "eager" in args.modes and ("ours", 32) in cases:
        rows.append(("ours", 32, "eager", False))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    budget = 60.0 * args.max_minutes
    report = {"device": device_info(args), "torch": torch.__version__, "python": platform.python_version(),
              "command": " ".join(sys.argv), "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
              "gpu_tests": None, "timings": [], "projection": []}
    print(f"gpu-check on {report['device']['name']} ({report['device']['device']}), torch {torch.__version__}",
          flush=True)
    if not args.skip_tests:
        report["gpu_tests"] = run_gpu_tests(timeout_s=max(60.0, budget * 0.55))
        t = report["gpu_tests"]
        print(f"gpu tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped",
              flush=True)
        if t["failed"] or t["errors"]:
            print(t["output_tail"], flush=True)
        save(args.out, report, start, finished=False)
    by_size = sizes_of_experiments()
    for method, size, mode, det in plan(args):
        experiment = by_size[size]
        key = {"method": method, "experiment": experiment, "image_size": size, "mode": mode, "compile": MODES[mode],
               "deterministic": det}
        # A row is started only if it should end within the budget: as long as the longest row of its mode so far.
        done = [r["task_wall_s"] + 1e-3 * r["data_path_ms"] * r["steps_per_epoch"] * r["epochs"]
                for r in report["timings"] if r.get("mode") == mode and "task_wall_s" in r]
        expected = max(done, default=60.0 if mode != "eager" and args.cuda else 10.0)
        if time.monotonic() - start + expected > budget:
            report["timings"].append({**key, "skipped": f"would end past --max-minutes {args.max_minutes:g}"})
            continue
        label = f"{method} {size}x{size} {mode} deterministic {'on' if det else 'off'}"
        try:
            row = time_training(experiment, args, mode, det, method)
        except Exception as err:  # noqa: BLE001 (one broken row must not cost the others their lease)
            report["timings"].append({**key, "error": f"{type(err).__name__}: {err}"[:2000]})
            print(f"  {label}: FAILED: {type(err).__name__}: {err}", flush=True)
            continue
        report["timings"].append(row)
        print(f"  {label}: {row['step_ms']:.2f} ms/step, {row['images_per_s']:.0f} images/s, "
              f"syncs/step {_fmt(row.get('syncs_per_step'))}, busy {_fmt(row.get('gpu_busy_share'), '.0f', 100, '%')}",
              flush=True)
        save(args.out, report, start, finished=False)  # what was measured survives a kill
    report["projection"] = projected_hours(report["timings"])
    if args.cuda:
        report["recommended"] = recommended_mode(report)
    save(args.out, report, start, finished=True)
    print()
    print(table(report))
    print(f"\nreport: {args.out} ({time.monotonic() - start:.0f} s)")
    tests = report["gpu_tests"]
    failed = bool(tests) and (tests["failed"] or tests["errors"] or tests["returncode"] not in (0, 5))
    bad = [r for r in report["timings"] if "error" in r or ("losses_finite" in r and not r["losses_finite"])]
    return 1 if failed or bad else 0


def save(path: str, report: dict, start: float, finished: bool) -> None:
    """The report as it stands (atomic: a reader never sees half a file); ``finished`` false until the end."""
    io.write_json(path, {**report, "finished": finished, "seconds": time.monotonic() - start})


if __name__ == "__main__":
    sys.exit(main())
