"""Helpers of `make check-reproduction-seed`: rerun one seed of the default grid and check it.

    python scripts/check_reproduction.py targets --seed 1   # the seed's metrics.json of every setting x method
    python scripts/check_reproduction.py targets --seed 1 --cover  # every method and every setting, at least cost
    python scripts/check_reproduction.py lock               # every output on disk hashes to dvc.lock
    python scripts/check_reproduction.py platform --write   # record this machine as the lock's producer
    python scripts/check_reproduction.py platforms --write  # record which platform made each checkpoint
    python scripts/check_reproduction.py platforms          # check that record against dvc.lock
    python scripts/check_reproduction.py portable           # rerun the portable-numerics reference jobs
    python scripts/check_reproduction.py portable --emulate EPYC-Milan  # ... under qemu-x86_64 -cpu EPYC-Milan

`lock` compares the MD5 of each file output recorded in dvc.lock (the hash DVC records for a file) with
the file on disk, skipping outputs that are not on disk (the seeds that were not rerun) and directory
outputs. Bit-identical results are promised for the same configuration on the same kind of machine:
PyTorch, MKL and oneDNN pick their kernels by CPU vendor and instruction set, so another CPU type rounds
differently and training drifts from the first step on. `results/platform.json` records the numerical
platform that produced the committed dvc.lock (`make lock` writes it). Exit codes of `lock`:

* 0: every output on disk hashes to dvc.lock;
* 1: some output differs on the recorded platform (or no platform is recorded): not reproduced; for a grid
  made with portable numerics (the record says `"numerics": "portable"`) also on every CPU type that has
  confirmed the portable reference outputs (`confirmed_on` of results/portable_reference.json);
* 2: no output of dvc.lock is on disk: nothing was checked;
* 3: some output differs, and this machine's bytes cannot be expected to match (another CPU type in
  native numerics, or a type not yet confirmed in portable numerics); the differing files and the
  metric deltas of every rerun metrics.json are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's ncil package
from ncil.pipeline import io  # noqa: E402
from ncil.pipeline.provenance import CPU_PLATFORM_KEYS as PLATFORM_KEYS  # noqa: E402
from ncil.pipeline.provenance import current_platform, same_platform  # noqa: E402
from ncil.stages.train import PLATFORM_NAME as SIDECAR  # noqa: E402  (loads no torch)


def covering_pairs(settings: list[str], methods: list[str], n_tasks: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """(setting, method) pairs that run every method and every setting at least once, at the least cost: every
    method in the setting of fewest tasks (``n_tasks``; the first such in params.yaml's order), and the first
    method (params.yaml's order: finetune in the default grid, the cheapest) once in each other setting. Each
    method's code runs on the shortest task chain (a method's cost grows with its tasks: pass_resnet18 in 5+1x5 is
    a chain of six ResNet tasks); each setting's split, base task and task schedule are rerun once."""
    if not settings or not methods:
        return []
    tasks = n_tasks or {}
    shortest = min(settings, key=lambda s: (tasks.get(s, 0), settings.index(s)))
    pairs = [(shortest, method) for method in methods] + [(s, methods[0]) for s in settings if s != shortest]
    return sorted(pairs, key=lambda pair: (settings.index(pair[0]), methods.index(pair[1])))


def targets(params_file: Path, seed: int, cover: bool = False) -> list[str]:
    """The seed's metrics.json of every setting x method of the grid, or (``cover``) of the covering pairs."""
    params = io.read_yaml(params_file)
    if seed not in params["seeds"]:
        raise SystemExit(f"{params_file}: seeds: {seed} is not one of the grid's seeds {params['seeds']}")
    from ncil.pipeline.experiment_grid import find_run

    settings, methods = list(params["scenario"]), list(params["method"])
    n_tasks = {s: find_run(params, s, methods[0], seed).n_tasks for s in settings}
    pairs = covering_pairs(settings, methods, n_tasks) if cover else [(s, m) for s in settings for m in methods]
    # The path owner's (results/<grid folder>/...), so a grid with its own folder is checked where it writes.
    return [find_run(params, setting, method, seed).metrics_file for setting, method in pairs]


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


PLATFORM_FILE = Path("results/platform.json")
PORTABLE_REFERENCE = Path("results/portable_reference.json")


def recorded_platform(path: Path | None) -> dict | None:
    """The platform record at ``path``, or None where there is none."""
    return io.read_json(path, "platform record") if path is not None and path.is_file() else None


def _describe(p: dict) -> str:
    return (f"{p.get('cpu_name', '?')} ({p.get('cpu_vendor', '?')} family {p.get('cpu_family', '?')} model "
            f"{p.get('cpu_model', '?')}, {p.get('machine', '?')}), torch {p.get('torch', '?')} "
            f"with {p.get('torch_cpu_capability', '?')} kernels")


def metric_deltas(paths: list[Path]) -> list[str]:
    """Avg / Last of each rerun metrics.json against the committed version (git HEAD)."""
    lines = []
    for path in sorted(paths):
        try:
            committed = json.loads(subprocess.run(["git", "show", f"HEAD:{path.as_posix()}"], capture_output=True,
                                                  text=True, check=True).stdout)
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            continue
        rerun = json.loads(path.read_text())
        cells = [f"{key} {committed[key]:.2f} -> {rerun[key]:.2f}" for key in ("avg_accuracy", "last_accuracy")
                 if key in committed and key in rerun]
        lines.append(f"  {path}: " + ", ".join(cells))
    return lines


def check_lock(lock_file: Path, platform_file: Path | None = None, here: dict | None = None,
               confirmed: list[dict] | None = None, producers: list[dict] | None = None,
               reference: dict | None = None, params: dict | None = None) -> int:
    """Compare every output on disk with ``lock_file``; ``confirmed``: the CPU types of the portable
    reference (``confirmed_types``), where a portable grid must be bit-identical too; ``producers``: the
    platforms that trained the grid's checkpoints (``grid_producers``), for a grid made on several machines:
    bytes are compared only where every one of them is comparable with this machine. ``reference`` (the
    portable reference) and ``params`` (the grid): on a type that reproduced only some backbones' reference
    outputs, the outputs made with those backbones alone must still be bit-identical (``output_backbones``)."""
    lock = io.read_yaml(lock_file)
    confirmed = confirmed or []
    checked, differing, metrics = 0, [], []
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path, md5 = Path(out["path"]), out.get("md5", "")
            if md5.endswith(".dir") or not path.is_file():
                continue
            checked += 1
            if path.name == "metrics.json":
                metrics.append(path)
            found = file_md5(path)
            if found != md5:
                differing.append(f"{path}: dvc.lock records md5 {md5}, the rerun wrote {found}")
    if checked == 0:
        print(f"{lock_file}: no output of dvc.lock is on disk: nothing was checked")
        return 2
    if not differing:
        print(f"{checked} outputs on disk hash to {lock_file}")
        return 0
    report = f"{len(differing)} of {checked} outputs differ from {lock_file}:\n" + "\n".join(differing)
    recorded = recorded_platform(platform_file)
    here = here if here is not None else current_platform()
    if recorded is not None and recorded.get("numerics") == "portable" and params is not None and not (
            byte_comparable(recorded, here, confirmed) and all(byte_comparable(p, here, confirmed) for p in producers or [])):
        held = comparable_backbones([here, recorded, *(producers or [])], reference)
        if held:
            return check_backbones(lock, params, held, differing, metrics, lock_file, here)
    foreign = [p for p in producers or [] if not byte_comparable(p, here, confirmed)]
    if recorded is not None and byte_comparable(recorded, here, confirmed) and foreign:
        print(f"{report}\n\nNOT COMPARABLE BYTE FOR BYTE: some checkpoints of {lock_file} were trained on "
              f"{_describe(foreign[0])} (results/<dataset>/platforms.json), whose bytes this machine "
              f"({_describe(here)}) cannot reproduce. Metrics of the rerun against the committed ones:\n"
              + "\n".join(metric_deltas(metrics)))
        return 3
    if recorded is None or byte_comparable(recorded, here, confirmed):
        why = (comparable_reason(recorded, here) if recorded is not None else
               f"and {platform_file} does not say which platform produced {lock_file}")
        print(f"not reproduced {why}:\n{report}")
        return 1
    print(f"{report}\n\nNOT COMPARABLE BYTE FOR BYTE: {lock_file} was produced on {_describe(recorded)}"
          f"{' in ' + recorded['numerics'] + ' numerics' if recorded.get('numerics') else ''}; this machine is "
          f"{_describe(here)}{', a CPU type that has not confirmed ' + str(PORTABLE_REFERENCE) if recorded.get('numerics') == 'portable' else ''}. "
          f"Kernels chosen by CPU type round differently, so a rerun here "
          f"cannot be bit-identical. Metrics of the rerun against the committed ones:\n"
          + "\n".join(metric_deltas(metrics)))
    return 3


def check_backbones(lock: dict, params: dict, held: frozenset[str], differing: list[str], metrics: list[Path],
                    lock_file: Path, here: dict) -> int:
    """The lock check on a type that reproduced the reference outputs of the backbones ``held`` only: exit 1
    if an output made with those backbones alone differs, else 3 (the rest reported with the metric deltas)."""
    made = output_backbones(lock, params)
    on_disk = [Path(o["path"]) for st in lock["stages"].values() for o in st.get("outs", [])
               if not o.get("md5", "").endswith(".dir") and Path(o["path"]).is_file()]
    compared = [p for p in on_disk if made.get(p.as_posix(), frozenset()) <= held]
    names = ", ".join(sorted(held))
    bad = [line for line in differing if made.get(line.split(":", 1)[0], frozenset()) <= held]
    if bad:
        print(f"not reproduced on {_describe(here)}, which reproduced the portable reference outputs of backbone(s) "
              f"{names}: {len(bad)} of the {len(compared)} outputs made with only those differ from {lock_file}:\n"
              + "\n".join(bad))
        return 1
    print(f"{len(compared)} outputs made with backbone(s) {names} only (and the data) were compared byte for byte and "
          f"hash to {lock_file}; {len(on_disk) - len(compared)} outputs involve other backbones, whose portable reference "
          f"outputs {_describe(here)} has not reproduced ({len(differing)} of them differ): NOT COMPARABLE BYTE FOR "
          f"BYTE. Metrics of the rerun against the committed ones:\n" + "\n".join(metric_deltas(metrics)))
    return 3


def same_cpu_type(a: dict, b: dict) -> bool:
    """Whether two platform records name the same CPU type and torch build (CPU_PLATFORM_KEYS, and the GPU)."""
    return all(a.get(k) == b.get(k) for k in (*PLATFORM_KEYS, "cuda_device"))


def byte_comparable(recorded: dict, here: dict, confirmed: list[dict]) -> bool:
    """Whether outputs made on ``recorded`` must be bit-identical when rerun ``here`` (pure).

    Native numerics: on the same CPU type only. Portable numerics (``recorded["numerics"]``, written by
    `make lock` from the grid's runtime.numerics): also on every CPU type in ``confirmed`` (the
    confirmed_on list of results/portable_reference.json), when the producer is one of them too."""
    if same_cpu_type(recorded, here):
        return True
    if recorded.get("numerics") != "portable" or recorded.get("cuda_device") or here.get("cuda_device"):
        return False
    return any(same_cpu_type(c, here) for c in confirmed) and any(same_cpu_type(c, recorded) for c in confirmed)


def comparable_reason(recorded: dict, here: dict) -> str:
    """Why bytes must match ``here`` (``byte_comparable`` holds)."""
    if same_cpu_type(recorded, here):
        return f"on the platform that produced it ({_describe(here)})"
    return (f"on {_describe(here)}, a CPU type that has confirmed the portable numerics of {PORTABLE_REFERENCE}, "
            f"as the producer ({_describe(recorded)}) has")


def confirmed_types(reference_file: Path) -> list[dict]:
    """The CPU types on which every portable reference output was bit-identical (none without the file):
    the types where a portable grid's bytes are compared."""
    if not reference_file.is_file():
        return []
    reference = io.read_json(reference_file, "portable reference")
    return [seen for seen in reference["confirmed_on"] if fully_confirmed(seen, reference)]


# --- Per backbone: a type that reproduced some backbones' reference outputs compares those methods' bytes ------
# The reference jobs hold one tiny run per backbone of the default grid (REFERENCE_JOBS). A CPU type that
# reproduced the ViT's outputs but not yet the ResNet-18's (it confirmed before those jobs existed) can still
# hold a portable grid's ViT methods to their bytes: every output whose making involved only confirmed backbones.

REFERENCE_BACKBONES = {"runs/t0": "vit", "runs/t1": "vit", "runs/r0": "resnet18", "runs/o0": "hybrid"}  # by folder


def confirmed_backbones(entry: dict, reference: dict) -> frozenset[str]:
    """The backbones all of whose reference outputs (``reference["hashes"]``) a confirmed_on entry lists."""
    outputs: dict[str, set[str]] = {}
    for path in reference["hashes"]:
        outputs.setdefault(REFERENCE_BACKBONES[path.rsplit("/", 1)[0]], set()).add(path)
    return frozenset(b for b, files in outputs.items() if files <= set(entry["files"]))


def comparable_backbones(platforms: list[dict], reference: dict | None) -> frozenset[str]:
    """The backbones whose portable reference outputs every CPU type in ``platforms`` (the producers and this
    machine) reproduced: none where one of them is not in confirmed_on, is a GPU, or there is no reference."""
    if not reference or not platforms or any(p.get("cuda_device") for p in platforms):
        return frozenset()
    sets = []
    for platform in platforms:
        entry = next((seen for seen in reference["confirmed_on"] if same_cpu_type(seen, platform)), None)
        if entry is None:
            return frozenset()
        sets.append(confirmed_backbones(entry, reference))
    return frozenset.intersection(*sets)


def output_backbones(lock: dict, params: dict) -> dict[str, frozenset[str]]:
    """Which backbones went into each output of ``lock`` (pure): a run's checkpoints, centers, memories,
    evaluations and metrics carry its method's backbone (its task 0's base recipe shares it), and every other
    output the union over the stage's dependencies, so data and splits carry none and tables carry all."""
    from ncil.pipeline import experiment_grid

    made: dict[str, frozenset[str]] = {}
    for run in experiment_grid.runs(params):
        backbone = frozenset({params["method"][run.method].get("backbone", "vit")})
        files = [run.metrics_file] + [f for t in range(run.n_tasks) for f in
                                      (run.checkpoint(t), run.centers(t), run.eval_file(t),
                                       *((run.memory(t),) if run.rehearsal else ()))]
        for path in files:
            made[path] = made.get(path, frozenset()) | backbone
    stages = list(lock["stages"].values())
    changed = True
    while changed:  # to the fixed point: the stages form a DAG, so at most its depth rounds
        changed = False
        for stage in stages:
            inputs = frozenset().union(*(made.get(d["path"], frozenset()) for d in stage.get("deps", [])))
            for out in stage.get("outs", []):
                new = made.get(out["path"], frozenset()) | inputs
                if new != made.get(out["path"], frozenset()):
                    made[out["path"]], changed = new, True
    return made


# --- Which machine made each checkpoint: results/<grid>/platforms.json ---------------------------------------
# Each training job writes platform.json beside its checkpoint (ncil/stages/train.py), outside DVC (a machine
# record, not bytes to reproduce), so `dvc pull` does not bring it. `make lock` collects the sidecars of a grid
# into this committed record, keyed by the checkpoint's path and its dvc.lock MD5: a user who pulls the
# results reads there which CPU or GPU produced each run, and `make verify` checks the record against dvc.lock.

PLATFORMS_RECORD = "results/{grid}/platforms.json"  # <grid>: the grid's folder (experiment_grid.grid_folder)


def lock_checkpoints(lock: dict) -> dict[str, str]:
    """Every checkpoint (``model.pt``) output of a dvc.lock, with the MD5 recorded for it (pure)."""
    return {out["path"]: out.get("md5", "") for stage in lock.get("stages", {}).values()
            for out in stage.get("outs", []) if Path(out["path"]).name == "model.pt"}


def platforms_record(sidecars: dict[str, dict], md5s: dict[str, str]) -> dict:
    """The record of a grid (pure): each distinct platform once, each checkpoint with its dvc.lock MD5,
    the index of the platform that trained it and, for a resumed task, those of its earlier parts."""
    platforms: list[dict] = []

    def index(platform: dict) -> int:
        if platform not in platforms:
            platforms.append(platform)
        return platforms.index(platform)

    checkpoints = {}
    for path in sorted(sidecars):
        sidecar = sidecars[path]
        entry = {"md5": md5s[path], "platform": index(sidecar["platform"])}
        if sidecar.get("resumed_from_platforms"):
            entry["resumed_from_platforms"] = [index(p) for p in sidecar["resumed_from_platforms"]]
        checkpoints[path] = entry
    return {"format": 1, "platforms": platforms, "checkpoints": checkpoints}


def read_sidecars(md5s: dict[str, str], root: Path = Path(".")) -> dict[str, dict]:
    """The sidecar of each checkpoint of ``md5s``, checked against the checkpoint on disk: the file's
    SHA-256 must be the one its sidecar names, and its MD5 the one dvc.lock records."""
    sidecars = {}
    for path, md5 in md5s.items():
        checkpoint = root / path
        sidecar_file = checkpoint.with_name(SIDECAR)
        if not checkpoint.is_file() or not sidecar_file.is_file():
            missing = checkpoint if not checkpoint.is_file() else sidecar_file
            raise SystemExit(f"{missing}: missing; the platform record is written from the checkpoints of a run "
                             f"and the {SIDECAR} beside each (run the grid first, or keep the committed record)")
        sidecar = io.read_json(sidecar_file, "platform sidecar")
        if not isinstance(sidecar.get("platform"), dict) or not isinstance(sidecar.get("checkpoint_sha256"), str):
            raise SystemExit(f"{sidecar_file}: expected the fields platform (an object) and checkpoint_sha256 "
                             f"(a string), as training writes them")
        found = io.sha256_file(checkpoint)
        if found != sidecar["checkpoint_sha256"]:
            raise SystemExit(f"{sidecar_file}: checkpoint_sha256 is {sidecar['checkpoint_sha256']}, but {checkpoint} "
                             f"hashes to {found}: the sidecar does not describe this checkpoint")
        if file_md5(checkpoint) != md5:
            raise SystemExit(f"{checkpoint}: its MD5 is not the {md5} of dvc.lock: record the outputs first (make lock)")
        sidecars[path] = sidecar
    return sidecars


def check_platforms_record(record: dict, md5s: dict[str, str], where: str) -> list[str]:
    """What is wrong with a grid's record against dvc.lock's checkpoints (pure; empty: nothing)."""
    if record.get("format") != 1 or not isinstance(record.get("platforms"), list) \
            or not isinstance(record.get("checkpoints"), dict):
        return [f"{where}: expected format 1 with the fields platforms (a list) and checkpoints (an object)"]
    problems, checkpoints, count = [], record["checkpoints"], len(record["platforms"])
    for path, md5 in sorted(md5s.items()):
        entry = checkpoints.get(path)
        if not isinstance(entry, dict):
            problems.append(f"{where}: checkpoints: {path} is missing (dvc.lock has it): rerun `make lock`")
            continue
        if entry.get("md5") != md5:
            problems.append(f"{where}: checkpoints: {path}: md5 {entry.get('md5')}, dvc.lock records {md5}")
        for i in [entry.get("platform"), *entry.get("resumed_from_platforms", [])]:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < count:
                problems.append(f"{where}: checkpoints: {path}: platform index {i!r}, expected 0..{count - 1}")
    problems += [f"{where}: checkpoints: {path} is not a checkpoint of dvc.lock" for path in sorted(checkpoints)
                 if path not in md5s]
    return problems


def platforms_record_file(params_file: Path) -> Path:
    """Where the grid of ``params_file`` keeps its platforms record: in its folder (the data set's name by default)."""
    from ncil.pipeline.experiment_grid import grid_folder

    return Path(PLATFORMS_RECORD.format(grid=grid_folder(io.read_yaml(params_file))))


def grid_producers(params_file: Path) -> list[dict]:
    """The platforms that trained the grid's checkpoints, from its committed record (none without one)."""
    if not params_file.is_file():
        return []
    record_file = platforms_record_file(params_file)
    return io.read_json(record_file, "platform record")["platforms"] if record_file.is_file() else []


def platforms_command(params_file: Path, lock_file: Path, write: bool, which: str | None) -> int:
    record_file = platforms_record_file(params_file)
    md5s = lock_checkpoints(io.read_yaml(lock_file)) if lock_file.is_file() else {}
    if write:
        io.write_json(record_file, platforms_record(read_sidecars(md5s), md5s))
        record = io.read_json(record_file, "platform record")
        print(f"{record_file}: {len(record['checkpoints'])} checkpoints from {len(record['platforms'])} platform(s)")
        return 0
    if record_file.exists() and not record_file.is_file():
        print(f"{record_file}: not a file (expected the JSON record of the grid's platforms)")
        return 1
    if not record_file.is_file():
        if md5s:
            print(f"{record_file}: missing: {lock_file} has {len(md5s)} checkpoints and no record of their "
                  f"platforms (`make lock` writes it)")
            return 1
        return 0
    record = io.read_json(record_file, "platform record")
    problems = check_platforms_record(record, md5s, str(record_file))
    if which is not None:
        entry = record.get("checkpoints", {}).get(which) if isinstance(record.get("checkpoints"), dict) else None
        if entry is None:
            print(f"{record_file}: no checkpoint {which}")
            return 1
        own = [problem for problem in problems if f" {which}" in problem]
        if own:
            print("\n".join(own))
            return 1
        print(f"{which} (md5 {entry['md5']}): {_describe(record['platforms'][entry['platform']])}")
        return 0
    if problems:
        print("\n".join(problems))
        return 1
    print(f"{record_file}: the platforms of all {len(md5s)} checkpoints of {lock_file}")
    return 0


# --- The portable numerics mode's reference jobs (runtime.numerics=portable, ncil/learning/numerics.py) -------

ROOT = Path(__file__).resolve().parents[1]


REFERENCE_METHODS = ("ours", "pass_resnet18", "ours_official")  # one per backbone of the default grid


def reference_params(params_file: Path = ROOT / "params.yaml") -> dict:
    """The tiny reference grid: the default digits set-up, one setting (4+2x3), seed 1, 2 epochs per
    task, one thread, portable numerics, and one method per backbone of the default grid: ``ours``
    (the ViT; tasks 0 and 1 exercise rotations, the teacher, PKS and PR), ``pass_resnet18`` (ResNet-18
    convolutions, oneDNN's kernels) and ``ours_official`` (the hybrid ConViT with its conv stem and the
    official preset's augmentation), task 0 of each; a few seconds per job."""
    params = io.read_yaml(params_file)
    params["train"] = {**params["train"], "epochs": 2}
    params["runtime"] = {**params["runtime"], "device": "cpu", "threads": 1, "numerics": "portable"}
    params["scenario"] = {"base4_inc2": params["scenario"]["base4_inc2"]}
    params["method"] = {name: params["method"][name] for name in REFERENCE_METHODS}
    params["seeds"] = [1]
    return params


REFERENCE_JOBS = (  # (name, argv after `python -m ncil`), run in order in one folder
    ("prepare", ["prepare", "--params", "params.yaml"]),
    ("split", ["split", "--params", "params.yaml", "--initial", "4", "--increment", "2",
               "--out", "results/digits/base4_inc2/split.json"]),
    ("task_0", ["train", "--params", "params.yaml", "--split", "results/digits/base4_inc2/split.json", "--task", "0",
                "--seed", "1", "--method", "rotation", "--checkpoint", "runs/t0/model.pt", "--centers", "runs/t0/centers.parquet"]),
    ("task_1", ["train", "--params", "params.yaml", "--split", "results/digits/base4_inc2/split.json", "--task", "1",
                "--seed", "1", "--method", "ours", "--prev-checkpoint", "runs/t0/model.pt",
                "--prev-centers", "runs/t0/centers.parquet", "--checkpoint", "runs/t1/model.pt",
                "--centers", "runs/t1/centers.parquet"]),
    ("resnet18_task_0", ["train", "--params", "params.yaml", "--split", "results/digits/base4_inc2/split.json",
                         "--task", "0", "--seed", "1", "--method", "rotation_resnet18",
                         "--checkpoint", "runs/r0/model.pt", "--centers", "runs/r0/centers.parquet"]),
    ("official_task_0", ["train", "--params", "params.yaml", "--split", "results/digits/base4_inc2/split.json",
                         "--task", "0", "--seed", "1", "--method", "official",
                         "--checkpoint", "runs/o0/model.pt", "--centers", "runs/o0/centers.parquet"]),
)
REFERENCE_FILES = ("runs/t0/model.pt", "runs/t0/centers.parquet", "runs/t1/model.pt", "runs/t1/centers.parquet",
                   "runs/r0/model.pt", "runs/r0/centers.parquet", "runs/o0/model.pt", "runs/o0/centers.parquet")


def emulator_prefix(cpu: str | None) -> list[str]:
    """The command prefix that runs a job under QEMU's user-mode emulator with CPU model ``cpu``
    (e.g. EPYC-Milan: a Zen 3 CPUID without AVX-512), or none. QEMU computes IEEE operations
    (add, mul, div, fma, sqrt, conversions) bit-exactly but rcpps/rsqrtps with its own tables, so an
    emulated run tests whether any kernel depends on those implementation-defined instructions;
    it is not a run on that CPU."""
    return ["qemu-x86_64", "-cpu", cpu] if cpu else []


def run_reference_jobs(folder: Path, emulate: str | None = None) -> dict[str, str]:
    """Run the reference jobs in ``folder`` (fresh processes: the mode is set before torch loads),
    under ``emulator_prefix(emulate)``, and return the MD5 of each checked output."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(reference_params(), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, argv in REFERENCE_JOBS:
        done = subprocess.run([*emulator_prefix(emulate), sys.executable, "-m", "ncil", *argv], cwd=folder, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"reference job {name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return {f: file_md5(folder / f) for f in REFERENCE_FILES}


def confirmed_entry(reference: dict, here: dict) -> dict | None:
    """The confirmed_on entry of ``here``'s CPU type, or None."""
    return next((seen for seen in reference["confirmed_on"] if same_platform(seen, here)), None)


def fully_confirmed(entry: dict, reference: dict) -> bool:
    """Whether a confirmed_on entry has reproduced every reference output (its ``files``): a type that
    confirmed an earlier, smaller set of reference jobs compares bytes only on those outputs."""
    return set(reference["hashes"]) <= set(entry["files"])


def check_portable(found: dict[str, str], reference: dict, here: dict) -> tuple[int, str]:
    """Compare ``found`` hashes with the reference. Exit codes: 0 equal (outputs without a reference hash
    yet are listed); 1 an output differs that this CPU type has confirmed before; 4 outputs differ
    that this type has not confirmed (reported, not a failure)."""
    expected = reference["hashes"]
    differing = [f for f, md5 in found.items() if f in expected and expected[f] != md5]
    unrecorded = [f for f in found if f not in expected]
    entry = confirmed_entry(reference, here)
    seen = set(entry["files"]) if entry else set()
    status = ("a CPU type that confirmed all of " if entry and fully_confirmed(entry, reference) else
              f"a CPU type that confirmed {len(seen)} of {len(expected)} outputs of " if entry else
              "a CPU type not yet listed in ")
    where = f"on {_describe(here)} ({status}{PORTABLE_REFERENCE})"
    if not differing:
        extra = "" if entry and fully_confirmed(entry, reference) and not unrecorded else \
            "; `python scripts/check_reproduction.py portable --record` records it"
        if unrecorded:
            extra = f"; {len(unrecorded)} outputs have no reference hash yet ({', '.join(unrecorded)})" + extra
        return 0, (f"portable numerics: the {len(found) - len(unrecorded)} reference outputs are bit-identical "
                   f"to the reference {where}{extra}")
    report = "\n".join(f"  {f}: reference {expected[f]}, here {found[f]}"
                       f"{'' if f in seen else ' (not yet confirmed on this type)'}" for f in differing)
    if seen & set(differing):
        return 1, f"portable numerics NOT reproduced {where}:\n{report}"
    return 4, (f"portable numerics differ {where} (reported, not failed: this type has not confirmed these "
               f"outputs):\n{report}")


def write_platform(path: Path, params_file: Path | None = None) -> None:
    """Record this machine as the producer of the committed outputs (temporary name, then rename), with
    the grid's numerics mode when it is portable (``byte_comparable``: then every confirmed type compares)."""
    numerics = None
    if params_file is not None and params_file.is_file():
        numerics = io.read_yaml(params_file).get("runtime", {}).get("numerics")
    io.write_json(path, current_platform(numerics="portable" if numerics == "portable" else None))


def confirmation(here: dict, seconds: float, files: list[str], day: str | None = None) -> dict:
    """A confirmed_on entry: the CPU type (what ``same_platform`` compares, its name and flags), the day,
    what was run there and the reference outputs it reproduced."""
    import datetime

    return {**{k: here[k] for k in (*PLATFORM_KEYS, "cpu_name", "cpu_flags")},
            "date": day or datetime.date.today().isoformat(),
            "evidence": f"`python scripts/check_reproduction.py portable --record`: the {len(files)} "
                        f"reference outputs bit-identical ({seconds:.0f} s)",
            "files": sorted(files)}


def record_confirmation(reference: dict, found: dict[str, str], here: dict, seconds: float,
                        day: str | None = None) -> list[str]:
    """Add what this machine reproduced to ``reference`` (every output it has a hash of matched): hashes of
    outputs that had none, and this CPU type's confirmation of all of them. Returns what changed."""
    import datetime

    day = day or datetime.date.today().isoformat()
    changes = []
    new = sorted(f for f in found if f not in reference["hashes"])
    if new:
        reference["hashes"].update({f: found[f] for f in new})
        changes.append(f"hashes of {', '.join(new)} written from {_describe(here)}")
    entry = confirmed_entry(reference, here)
    if entry is None:
        reference["confirmed_on"].append(confirmation(here, seconds, list(found), day))
        changes.append(f"{_describe(here)} confirmed")
    elif set(found) - set(entry["files"]):
        entry["evidence"] += (f"; {day}: all {len(found)} reference outputs bit-identical ({seconds:.0f} s), "
                              f"{len(set(found) - set(entry['files']))} of them confirmed then")
        entry["files"] = sorted(set(entry["files"]) | set(found))
        changes.append(f"{_describe(here)} confirmed {len(found)} outputs")
    return changes


def portable_command(reference_file: Path, record: bool, folder: Path | None, emulate: str | None = None) -> int:
    import tempfile

    if emulate and record:
        raise SystemExit("--record with --emulate: an emulated CPU is not a machine; it is never recorded")
    here = current_platform()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ncil-portable-") as tmp:
        found = run_reference_jobs(folder or Path(tmp), emulate)
    seconds = time.monotonic() - start
    if emulate:
        reference = io.read_json(reference_file, "portable reference")
        differing = [f"  {f}: reference {reference['hashes'][f]}, emulated {md5}" for f, md5 in found.items()
                     if f in reference["hashes"] and reference["hashes"][f] != md5]
        print(f"portable numerics under qemu-x86_64 -cpu {emulate} (emulated, not a real machine): "
              + ("bit-identical to the reference" if not differing else "differ:\n" + "\n".join(differing)))
        return 1 if differing else 0
    reference = io.read_json(reference_file, "portable reference") if reference_file.is_file() else None
    if reference is None:
        if not record:
            print(f"{reference_file}: no reference yet; these hashes were found:\n" + io.dumps_json(found))
            return 2
        reference = {"hashes": {}, "confirmed_on": []}
    rc, message = check_portable(found, reference, here)
    print(message)
    if record and rc == 0:
        changes = record_confirmation(reference, found, here, seconds)
        if changes:
            io.write_json(reference_file, reference)
            print(f"{reference_file}: " + "; ".join(changes))
    return rc


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("targets")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--params", type=Path, default=Path("params.yaml"))
    t.add_argument("--cover", action="store_true",
                   help="every method once and every setting at least once, not every setting x method")
    c = sub.add_parser("lock")
    c.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    c.add_argument("--platform", type=Path, default=PLATFORM_FILE)
    c.add_argument("--reference", type=Path, default=PORTABLE_REFERENCE)
    c.add_argument("--params", type=Path, default=Path("params.yaml"), help="the grid (its platforms record)")
    w = sub.add_parser("platform")
    w.add_argument("--write", action="store_true", help=f"write {PLATFORM_FILE} instead of printing")
    w.add_argument("--check-same", action="store_true",
                   help=f"exit 3 if {PLATFORM_FILE} records a machine whose bytes this one cannot reproduce")
    w.add_argument("--params", type=Path, default=Path("params.yaml"), help="the grid whose numerics --write records")
    pt = sub.add_parser("portable", help="rerun the portable-numerics reference jobs and compare their hashes")
    pt.add_argument("--reference", type=Path, default=PORTABLE_REFERENCE)
    pt.add_argument("--record", action="store_true",
                    help="hashes equal: add this CPU type to confirmed_on; no reference yet: write it from this machine")
    pt.add_argument("--folder", type=Path, help="where to run the jobs (default: a temporary folder)")
    pt.add_argument("--emulate", metavar="CPU", help="run the jobs under qemu-x86_64 -cpu CPU (e.g. EPYC-Milan); "
                    "compares, never records")
    pf = sub.add_parser("platforms", help=f"the committed record of which platform made each checkpoint "
                        f"({PLATFORMS_RECORD}): check it against dvc.lock (default), write it, or look one up")
    pf.add_argument("--params", type=Path, default=Path("params.yaml"), help="the grid (its dataset names the record)")
    pf.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    pf.add_argument("--write", action="store_true", help=f"write the record from the {SIDECAR} beside each checkpoint")
    pf.add_argument("--which", metavar="CHECKPOINT", help="print the platform that trained this checkpoint")
    args = parser.parse_args(argv)
    if args.command == "platforms":
        return platforms_command(args.params, args.lock, args.write, args.which)
    if args.command == "portable":
        return portable_command(args.reference, args.record, args.folder, args.emulate)
    if args.command == "targets":
        print(" ".join(targets(args.params, args.seed, args.cover)))
        return 0
    if args.command == "platform":
        if args.check_same:
            recorded, here = recorded_platform(PLATFORM_FILE), current_platform()
            confirmed = confirmed_types(PORTABLE_REFERENCE)
            for producer in ([recorded] if recorded is not None else []) + grid_producers(args.params):
                if not byte_comparable(producer, here, confirmed):
                    print(f"{PLATFORM_FILE}: produced on {_describe(producer)}, whose bytes this machine "
                          f"({_describe(here)}) cannot reproduce")
                    return 3
            return 0
        if args.write:
            write_platform(PLATFORM_FILE, args.params)
            print(f"{PLATFORM_FILE}: {_describe(current_platform())}")
        else:
            print(io.dumps_json(current_platform()), end="")
        return 0
    return check_lock(args.lock, args.platform, confirmed=confirmed_types(args.reference),
                      producers=grid_producers(args.params),
                      reference=io.read_json(args.reference, "portable reference") if args.reference.is_file() else None,
                      params=io.read_yaml(args.params) if args.params.is_file() else None)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except io.ArtifactError as err:  # a damaged record or artifact: one line naming the file, not a traceback
        sys.exit(f"error: {err}")
