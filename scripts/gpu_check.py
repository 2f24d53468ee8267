"""`make gpu-check`: the GPU path proven in one short command (GPU tests, timed training steps, a report).

    python3 scripts/gpu_check.py                      # on a GPU machine: <= 8 minutes, no data set needed
    python3 scripts/gpu_check.py --device cpu         # anywhere: reduced sizes, the report says device cpu

1. Runs the tests marked ``gpu`` (``tests/test_gpu.py``; all skipped without CUDA) in a pytest subprocess
   and counts them in the report.
2. Times ``ncil.train.train_task`` itself, task 1 of the paper preset's method ``ours`` (paper ViT,
   4 rotations, the teacher's forward, PKS, PR, prototype augmentation, bf16 autocast on CUDA, uint8
   images on the device augmented in batches there) on synthetic images shaped like CIFAR-100
   (32x32, batch 64), TinyImageNet (64x64) and ImageNet-Subset (224x224), with ``runtime.compile``
   off and on, and the 32x32 step once more with torch's deterministic algorithms off (their cost).
   The first epoch of each run is the warm-up (and the compilation); the step time is the median
   epoch of the others divided by its steps, as the training loop runs them (its per-step
   ``float(loss)`` included). The data path (index_select + ``augment_batch``, the loop's first two
   lines) is timed alone over the same batches; its share is that time over the step time.
3. Writes one JSON report (``--out``) and prints a table: device, torch version, images/s, step time,
   data-path share, peak memory, achieved FLOP/s (``ncil.flops``: analytic count of the step) and the
   utilisation against the device's dense bf16 peak (``ncil.flops.DEVICE_PEAKS`` or ``--peak-tflops``),
   then the hours per paper setting projected from the measured rates (the schedules of
   ``conf/experiment/{cifar100,tinyimagenet,imagenet_subset}.yaml``).

It needs only this package, torch, timm, numpy, pyyaml and pytest: no Hydra, omegaconf, Snakemake or
DVC (``ncil.plainconf`` reads ``conf/`` as plain YAML), so it runs on a lent GPU machine as it is.
CUBLAS_WORKSPACE_CONFIG=:4096:8 is set before torch loads (cuBLAS's deterministic mode; see
tests/test_gpu.py), in this process and the tests'.

The device command (the lent H200 of this workplace; one `run` call, 600 s limit, the report and the
log come back under $OUT):

    set -o pipefail; PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out $OUT/gpu_check.json \
        --max-minutes 8 2>&1 | tee $OUT/gpu_check.log        # run(..., timeout_s=600)
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
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# cuBLAS reads this once, when it creates its first handle: set before torch can touch the GPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

from ncil import flops, io, optim, plainconf, runtime, synthetic, train  # noqa: E402
from ncil.config import TrainConfig, parse_params, parse_section  # noqa: E402
from ncil.data import arrays, augment  # noqa: E402
from ncil.data.catalog import DATASETS, class_split_counts  # noqa: E402
from ncil.data.scenario import task_sizes  # noqa: E402
from ncil.progress import EpochProgress  # noqa: E402

METHOD = "ours"
# ImageNet-Subset's classes hold 732..1,300 training images (ncil.data.catalog); the projection takes 1,300.
NOMINAL_CLASS_IMAGES = {"imagenet_subset": 1300}
# CPU runs (--device cpu): the paper's image and patch sizes with a shrunken ViT, batch 8.
REDUCED_MODEL = {"embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (reduced sizes)")
    ap.add_argument("--out", default="benchmarks/gpu_check/report.json", help="JSON report to write")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense bf16 peak in TFLOP/s (default: ncil.flops.DEVICE_PEAKS by device name)")
    ap.add_argument("--compile", choices=("both", "off", "on"), default=None,
                    help="runtime.compile rows to time (default: both on CUDA, off on the CPU)")
    ap.add_argument("--sizes", default="32,64,224", help="image sides to time, of 32, 64, 224")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the gpu-marked tests")
    ap.add_argument("--max-minutes", type=float, default=8.0,
                    help="skip the remaining timings once this much time has passed (they are reported as skipped)")
    args = ap.parse_args(argv)
    args.cuda = args.device.startswith("cuda")
    if args.cuda and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available on this machine (torch {torch.__version__}); "
                 "use --device cpu for the reduced CPU run")
    if args.compile is None:
        args.compile = "both" if args.cuda else "off"
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes: expected comma-separated image sides, got {args.sizes!r}")
    unknown = sorted(set(args.sizes) - set(sizes_of_experiments()))
    if unknown:
        ap.error(f"--sizes: no paper experiment at side {unknown[0]} (expected of {sorted(sizes_of_experiments())})")
    return args


def image_size(experiment: str) -> int:
    return int(plainconf.group_option("dataset", plainconf.paper_experiment(experiment)["dataset"])["image_size"])


def sizes_of_experiments() -> dict[int, str]:
    """Image side -> the paper experiment (conf/experiment/<name>.yaml) at that side."""
    return {image_size(name): name for name in plainconf.PAPER_EXPERIMENTS}


# --- the workload ----------------------------------------------------------------------------------

def shape(args) -> dict:
    """Batch, classes and images of the timed task: CIFAR-100 50+10's first increment on a GPU."""
    if args.cuda:
        return {"batch": 64, "n_old": 50, "n_new": 10, "steps": {32: 25, 64: 5, 224: 5}, "epochs": {32: 5, 64: 3, 224: 3}}
    return {"batch": 8, "n_old": 4, "n_new": 2, "steps": {32: 2, 64: 2, 224: 2}, "epochs": {32: 2, 64: 2, 224: 2}}


def params_for(experiment: str, args, compile_: bool, epochs: int, batch: int):
    exp = plainconf.paper_experiment(experiment)
    overrides = {section: dict(keys) for section, keys in exp["overrides"].items()}  # the experiment's own keys
    overrides["train"] = {**overrides.get("train", {}), "epochs": epochs, "batch_size": batch, "lr_step": 0}
    overrides["runtime"] = {**overrides.get("runtime", {}), "device": args.device,
                            "threads": 4 if args.cuda else 1, "compile": compile_}
    if not args.cuda:
        overrides["model"] = {**overrides.get("model", {}), **REDUCED_MODEL}
    data = plainconf.compose_params(exp["dataset"], exp["model"], exp["train"], METHOD, exp["scenarios"][:1],
                                    overrides=overrides)
    return parse_params(data, source=f"conf/experiment/{experiment}.yaml (plain YAML, scripts/gpu_check.py)")


@contextlib.contextmanager
def epoch_seconds():
    """Within: every epoch of ``train_task`` is timed (after a device sync); yields the list of seconds.

    The training code offers no hook for it (``ncil.train`` builds its ``EpochProgress`` itself), so
    the name is swapped in ``ncil.train`` for the duration, with a subclass that only also keeps the
    time: nothing else of the loop changes.
    """
    seconds: list[float] = []

    class Recorder(EpochProgress):
        def end_epoch(self, epoch, lr):
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - self.t0)
            return super().end_epoch(epoch, lr)

    saved = train.EpochProgress
    train.EpochProgress = Recorder
    try:
        yield seconds
    finally:
        train.EpochProgress = saved


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
        for idx in arrays.batches(len(x_all), batch, train.torch_cpu_generator(generator)):
            idx = idx.to(device)
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


def time_training(experiment: str, args, compile_: bool, deterministic_on: bool = True) -> dict:
    """One timed ``train_task`` of ``ours`` task 1 at the experiment's image size."""
    s = shape(args)
    size = image_size(experiment)
    epochs, steps, batch = s["epochs"][size], s["steps"][size], s["batch"]
    p = params_for(experiment, args, compile_, epochs, batch)
    per_class = steps * batch // s["n_new"]
    job, split, previous, centers = synthetic.incremental_task(p, METHOD, s["n_old"], s["n_new"], per_class)
    device = runtime.resolve_device(p.runtime.device)
    log = logging.getLogger("ncil.gpu_check")
    log.handlers[:] = [logging.NullHandler()]
    log.propagate = False
    if compile_:
        import torch._dynamo as dynamo  # (binds dynamo only: a bare `import torch._dynamo` would make torch local)

        dynamo.reset()  # compile afresh, as a training job does (no graphs or dynamic shapes of another size)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    with epoch_seconds() as seconds, deterministic(deterministic_on):
        payload, _ = train.train_task(p, job, split, previous, centers, log)
    sync(device)
    wall = time.perf_counter() - start
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    step_s = steady / steps
    data_s = time_data_path(p, split, device, batch, epochs=max(1, epochs - 1))
    rot = 4 if p.method[METHOD].rotation else 1
    n_out = rot * (s["n_old"] + s["n_new"])
    flop = flops.step_flops(flops.forward_flops(p.model), p.model.embed_dim, batch, rot, n_out, teacher=True,
                            extra_head_rows=(rot + 1) * batch)
    losses = [h["loss"] for h in payload["history"]]
    return {
        "experiment": experiment, "image_size": size, "patch_size": p.model.patch_size,
        "tokens": (size // p.model.patch_size) ** 2, "model": {k: getattr(p.model, k) for k in REDUCED_MODEL},
        "batch": batch, "rows_per_step": rot * batch, "compile": compile_, "deterministic": deterministic_on,
        "epochs": epochs, "steps_per_epoch": steps, "epoch_s": seconds,
        "step_ms": 1e3 * step_s, "images_per_s": batch / step_s,
        "data_path_ms": 1e3 * data_s, "data_path_share": data_s / step_s,
        "warmup_s": seconds[0] - steady,  # the first epoch's extra time: compilation, allocator, cuDNN choice
        "task_wall_s": wall,
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "flop_per_step": flop, "achieved_tflops": flop / step_s / 1e12,
        "losses": losses, "losses_finite": all(math.isfinite(v) for v in losses),
    }


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
    """Hours of one run of every paper setting at the measured FLOP rate of its image size (eager and compiled)."""
    rates: dict[tuple[int, bool], float] = {}
    for r in rows:
        if r.get("deterministic", True) and "achieved_tflops" in r:
            rates[(r["image_size"], r["compile"])] = r["achieved_tflops"] * 1e12
    out = []
    for name in plainconf.PAPER_EXPERIMENTS:
        exp = plainconf.paper_experiment(name)
        dataset = {**plainconf.group_option("dataset", exp["dataset"]), **exp["overrides"].get("dataset", {})}
        model = parse_params(plainconf.compose_params(exp["dataset"], exp["model"], exp["train"],
                                                      overrides=exp["overrides"]),
                             source=f"conf/experiment/{name}.yaml").model
        recipe_cfg = parse_section(TrainConfig, plainconf.group_option("train", exp["train"]), "conf/train", "train")
        per_class = DATASETS[dataset["name"]].smallest_class or NOMINAL_CLASS_IMAGES[dataset["name"]]
        train_images = class_split_counts(per_class, 0.0, dataset["val_fraction"])[0]
        for scenario in exp["scenarios"]:
            sc = plainconf.group_option("scenario", scenario)
            sizes = task_sizes(dataset["n_classes"], sc["initial_increment"], sc["increment"])
            epochs = [optim.task_recipe(recipe_cfg, t).epochs for t in range(len(sizes))]
            total = flops.setting_flops(sizes, train_images, batch, epochs, flops.forward_flops(model), model.embed_dim)
            size = dataset["image_size"]
            out.append({
                "dataset": dataset["name"], "setting": f"{sizes[0]}+{sizes[1]}x{len(sizes) - 1}", "image_size": size,
                "train_images_per_class": train_images, "epochs": epochs[:2], "steps": sum(flops.task_steps(
                    sizes, train_images, batch, epochs)), "flop": total,
                "hours_eager": flops.hours(total, rates.get((size, False))),
                "hours_compiled": flops.hours(total, rates.get((size, True))),
            })
    return out


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


def table(report: dict) -> str:
    d = report["device"]
    peak = d.get("peak_tflops")
    tag = "cuda" if d["device"] == "cuda" else "cpu, reduced size: NOT a GPU result"
    peak_text = f"{peak:g} TFLOP/s ({d['peak_source']})" if peak else "unknown (give --peak-tflops)"
    lines = [f"device: {d['name']} ({tag}); torch {report['torch']}; dense bf16 peak: {peak_text}"]
    t = report["gpu_tests"]
    if t:
        lines.append(f"gpu tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
                     f"{t['skipped']} skipped ({t['seconds']:.0f} s)")
    lines += ["", f"| {d['device']}: ours task 1 | compile | deterministic | step ms | images/s | data path | "
                  "peak MiB | TFLOP/s | of peak |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["timings"]:
        if "error" in r:
            lines.append(f"| {r['image_size']}x{r['image_size']} | {'on' if r['compile'] else 'off'} | "
                         f"{'on' if r['deterministic'] else 'off'} | FAILED: {r['error'][:120]} | | | | | |")
            continue
        if "skipped" in r:
            lines.append(f"| {r['image_size']}x{r['image_size']} | {'on' if r['compile'] else 'off'} | "
                         f"{'on' if r['deterministic'] else 'off'} | skipped: {r['skipped']} | | | | | |")
            continue
        mem = f"{r['peak_memory_mib']:.0f}" if r["peak_memory_mib"] is not None else "-"
        util = f"{100 * r['achieved_tflops'] / peak:.1f}%" if peak else "-"
        lines.append(f"| {r['image_size']}x{r['image_size']} ({r['tokens']} tokens, batch {r['batch']}) | "
                     f"{'on' if r['compile'] else 'off'} | {'on' if r['deterministic'] else 'off'} | "
                     f"{r['step_ms']:.2f} | {r['images_per_s']:.0f} | {100 * r['data_path_share']:.1f}% | {mem} | "
                     f"{r['achieved_tflops']:.3g} | {util} |")
    rates = "measured rates" if d["device"] == "cuda" else "rates of the reduced CPU model: NOT a GPU projection"
    lines += ["", f"| {d['device']}: hours per paper run ({rates}) | FLOP | eager | compiled |", "|---|---|---|---|"]
    for h in report["projection"]:
        def fmt(v):
            return "-" if v is None else f"{v:.2f}"
        lines.append(f"| {h['dataset']} {h['setting']} | {h['flop']:.3g} | {fmt(h['hours_eager'])} | "
                     f"{fmt(h['hours_compiled'])} |")
    return "\n".join(lines)


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
        report["gpu_tests"] = run_gpu_tests(timeout_s=max(60.0, budget * 0.45))
        t = report["gpu_tests"]
        print(f"gpu tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped",
              flush=True)
        if t["failed"] or t["errors"]:
            print(t["output_tail"], flush=True)
        save(args.out, report, start, finished=False)
    by_size = sizes_of_experiments()
    eager = [(32, False, True), (32, False, False)] if 32 in args.sizes else []  # the second: deterministic off
    eager += [(size, False, True) for size in args.sizes if size != 32]
    compiled = [(size, True, True) for size in args.sizes]
    plan = (eager if args.compile in ("both", "off") else []) + (compiled if args.compile in ("both", "on") else [])
    for size, compile_, det in plan:
        experiment = by_size[size]
        # A row is started only if it should end within the budget: as long as the longest row of its kind so far.
        done = [r["task_wall_s"] + 1e-3 * r["data_path_ms"] * r["steps_per_epoch"] * r["epochs"]
                for r in report["timings"] if r.get("compile") == compile_ and "task_wall_s" in r]
        expected = max(done, default=90.0 if compile_ and args.cuda else 10.0)
        if time.monotonic() - start + expected > budget:
            report["timings"].append({"experiment": experiment, "image_size": size, "compile": compile_,
                                      "deterministic": det, "skipped": f"would end past --max-minutes {args.max_minutes:g}"})
            continue
        label = f"{size}x{size} compile {'on' if compile_ else 'off'} deterministic {'on' if det else 'off'}"
        try:
            row = time_training(experiment, args, compile_, det)
        except Exception as err:  # noqa: BLE001 (one broken row must not cost the others their lease)
            report["timings"].append({"experiment": experiment, "image_size": size, "compile": compile_,
                                      "deterministic": det, "error": f"{type(err).__name__}: {err}"[:2000]})
            print(f"  {label}: FAILED: {type(err).__name__}: {err}", flush=True)
            continue
        report["timings"].append(row)
        print(f"  {label}: {row['step_ms']:.2f} ms/step, {row['images_per_s']:.0f} images/s", flush=True)
        save(args.out, report, start, finished=False)  # what was measured survives a kill
    report["projection"] = projected_hours(report["timings"])
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
