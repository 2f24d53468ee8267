"""``train``: one task's training; writes its checkpoint and its class centers.

Before any data is loaded, the command is checked: no output is an input (or the other output),
the outputs can be written, and for task t >= 1 the previous checkpoint is task t-1 of this very run
(data set, class order, seen classes, seed, method or base recipe, model) and its centers belong to
it. The loop itself is ``ncil.learning.training.train_task``.

Preemption (``ncil.learning.resume``): the task's resumable state ``resume.pt`` beside the checkpoint is saved
every ``runtime.resume_every`` epochs and on SIGTERM or Ctrl-C (SIGINT) (then the job exits with 143 or
130, one line on stderr); a rerun resumes from it, refuses a damaged one or one of other params, split,
data or code (``data_identity``, ``code_identity``), and removes it once the outputs are written.
``platform.json`` beside the checkpoint records the platform that trained it
(``ncil.pipeline.provenance.current_platform``) and the checkpoint's SHA-256: removed before training, written
after the checkpoint, outside the DVC-tracked bytes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ncil import cli

VERB = "train"
HELP = "train one task and write its checkpoint and class centers"


@dataclass(frozen=True)
class Args:
    params: str
    log: str | None
    split: str
    task: int
    seed: int
    method: str
    prev_checkpoint: str | None
    prev_centers: str | None
    checkpoint: str
    centers: str
    prev_memory: str | None = None
    memory: str | None = None
    statistics: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_params(parser)
    cli.add_log(parser)
    parser.add_argument("--split", required=True)
    parser.add_argument("--task", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--method", required=True, help="incremental method (task 0: its base recipe)")
    parser.add_argument("--prev-checkpoint")
    parser.add_argument("--prev-centers")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--centers", required=True)
    parser.add_argument("--prev-memory", help="task t-1's exemplar memory (rehearsal methods only, tasks t >= 1)")
    parser.add_argument("--memory", help="this task's exemplar memory (rehearsal methods only: exemplars_per_class > 0)")
    parser.add_argument("--statistics", help="this task's classes' mean and covariance (classifier fecam only)")


def check_paths(args: Args) -> None:
    """The command's own consistency (pure): task range aside, the flags a task needs, no overlap."""
    if args.task < 0:
        raise cli.UsageError(f"--task {args.task}: expected 0 or more")
    if args.task == 0 and (args.prev_checkpoint or args.prev_centers or args.prev_memory):
        raise cli.UsageError("--prev-checkpoint/--prev-centers/--prev-memory: task 0 starts from scratch and takes none")
    if args.task > 0 and not (args.prev_checkpoint and args.prev_centers):
        raise cli.UsageError("tasks after the first need --prev-checkpoint and --prev-centers")
    cli.refuse_overlap(
        {"--checkpoint": args.checkpoint, "--centers": args.centers, "--memory": args.memory,
         "--statistics": args.statistics, "--log": args.log},
        {"--params": args.params, "--split": args.split, "--prev-checkpoint": args.prev_checkpoint,
         "--prev-centers": args.prev_centers, "--prev-memory": args.prev_memory},
    )


def check_memory_flags(args: Args, method, params_file: str) -> None:
    """The exemplar memory's flags against the method (pure): a rehearsal method (exemplars_per_class > 0)
    writes ``--memory`` and, from task 1 on, reads ``--prev-memory``; any other method takes neither, so a
    non-exemplar method's job can never be handed an old task's images."""
    if not method.exemplars_per_class:
        given = [flag for flag, value in (("--memory", args.memory), ("--prev-memory", args.prev_memory)) if value]
        if given:
            raise cli.UsageError(f"{'/'.join(given)}: --method {args.method} keeps no exemplars (exemplars_per_class 0 "
                                 f"in {params_file}): it neither reads nor writes an exemplar memory")
        return
    if not args.memory:
        raise cli.UsageError(f"--memory: --method {args.method} keeps {method.exemplars_per_class} exemplars per class "
                             f"({params_file}): name the file its exemplar memory is written to")
    if args.task > 0 and not args.prev_memory:
        raise cli.UsageError(f"--prev-memory: task {args.task} of --method {args.method} trains on task "
                             f"{args.task - 1}'s exemplar memory: name it")


def check_statistics_flag(args: Args, method, params_file: str) -> None:
    """``--statistics`` against the method (pure): every task of a FeCAM method (classifier fecam) writes its
    classes' statistics; any other method writes none."""
    if method.classifier == "fecam" and not args.statistics:
        raise cli.UsageError(f"--statistics: --method {args.method} classifies with class statistics (classifier "
                             f"fecam in {params_file}): name the file task {args.task}'s statistics are written to")
    if method.classifier != "fecam" and args.statistics:
        raise cli.UsageError(f"--statistics: --method {args.method} has classifier {method.classifier} "
                             f"({params_file}): it writes no class statistics")


def resolve_method(p, args: Args, params_file: str):
    """The MethodConfig of this job: for task 0 any method of the named base recipe."""
    if args.task == 0:
        recipes = {m.base_recipe: m for m in reversed(p.method.values())}  # validated to agree per recipe
        if args.method not in recipes:
            raise cli.UsageError(f"--method {args.method}: task 0 takes a base recipe ({sorted(recipes)})")
        return recipes[args.method]
    if args.method not in p.method:
        raise cli.UsageError(f"--method {args.method}: not in {params_file} (methods: {sorted(p.method)})")
    return p.method[args.method]


def check_previous(previous: dict, job, p, expected_method: str, prev_file: str, split_file: str) -> None:
    """Refuse a previous checkpoint that is not task t-1 of this run (pure; names both files and the field).

    ``expected_method``: what task t-1 was trained as (the base recipe for task 0, else the method).
    """
    from ncil.data.splits import seen_classes
    from ncil.pipeline.config import to_dict
    from ncil.pipeline.io import ArtifactError

    config = previous.get("config", {})
    expected = {
        "task": job.task - 1,
        "dataset": p.dataset.name,
        "class_order": list(job.class_order),
        "seen_classes": seen_classes({"tasks": job.tasks}, job.task - 1),
        "seed": job.seed,
        "method": expected_method,
        "model": to_dict(p.model),
    }
    found = {
        "task": previous.get("task"),
        "dataset": config.get("dataset", {}).get("name"),
        "class_order": list(previous.get("class_order", [])),
        "seen_classes": list(previous.get("seen_classes", [])),
        "seed": config.get("seed"),
        "method": config.get("method"),
        "model": config.get("model"),
    }
    where = {"dataset": "config.dataset.name", "seed": "config.seed", "method": "config.method",
             "model": "config.model"}
    for key, want in expected.items():
        if found[key] != want:
            raise ArtifactError(
                f"--prev-checkpoint {prev_file}: {where.get(key, key)}: expected {want!r} (task {job.task} of "
                f"{split_file} with --seed {job.seed} --method {job.method_name}), found {found[key]!r}: "
                "not task t-1 of this run")


def with_validation(train_data, val_data):
    """The training split followed by the validation split's images (method ``train_images: train_val``)."""
    import numpy as np

    from ncil.data.arrays import Split

    return Split(np.concatenate([train_data.images, val_data.images]), np.concatenate([train_data.labels, val_data.labels]))


PLATFORM_NAME = "platform.json"  # the sidecar beside model.pt


def platform_path(checkpoint: str) -> Path:
    return Path(checkpoint).with_name(PLATFORM_NAME)


def platform_sidecar(platform: dict, checkpoint: str, checkpoint_sha256: str, earlier: list[dict]) -> dict:
    """What platform.json holds (pure): the platform, the checkpoint it produced and that file's SHA-256;
    ``earlier``: the platforms of earlier parts of a resumed task that round differently (omitted if none)."""
    record = {"platform": platform, "checkpoint": Path(checkpoint).name, "checkpoint_sha256": checkpoint_sha256}
    if earlier:
        record["resumed_from_platforms"] = earlier
    return record


# The entry point every verb runs through, as ncil.pipeline.workflow.ENTRY_MODULES (tests/test_resume.py checks
# that code_identity covers exactly the files dvc.yaml and the Snakemake rule list for a train step).
ENTRY_MODULES = ("ncil.__main__",)


def code_identity() -> dict[str, str]:
    """SHA-256 of every package file the train step runs (its import closure, ncil/pipeline/codedeps.py), by path."""
    from ncil.pipeline import codedeps, io

    root = Path(__file__).resolve().parents[2]  # the folder holding the ncil package
    files = codedeps.step_code_files(VERB, {VERB: __name__}, root, ENTRY_MODULES)
    return {f: io.sha256_file(root / f) for f in files}


def data_identity(dataset: str, splits: list[str]) -> dict[str, str | None]:
    """The manifest's SHA-256 of each prepared file the task reads, by path (None: not listed).

    The manifest is read, not verified here: ``load_split`` checks the files against these very entries.
    """
    from ncil.pipeline import io, paths

    files = io.verify_manifest(paths.data_manifest(dataset), names=[])["files"]  # format checked, nothing hashed
    entries = {f: files.get(Path(f).name) for split in splits for f in paths.data_arrays(dataset, split)}
    return {f: e.get("sha256") if isinstance(e, dict) else None for f, e in entries.items()}


def stop_line(stop, flag, state_file: Path) -> str:
    """The one line a stopped job prints (pure): what stopped it, where, what was saved."""
    import signal

    from ncil.learning import resume

    word = "interrupted" if flag.signum == signal.SIGINT else "preempted"
    if stop.saved:
        where = resume.describe_position(stop.epoch, stop.step, stop.steps)
        return f"{word}: state saved at {where} of task {stop.task} ({state_file}); rerun to resume"
    if stop.epoch == 0 and stop.step == 0:
        return f"{word}: before the first step of task {stop.task}, nothing to save; rerun to train it"
    return (f"{word}: runtime.resume_every is 0, no state saved; rerun to train task {stop.task} "
            "again from epoch 1")


def tell(log, line: str) -> None:
    """One warning line in the log and on stderr."""
    log.warning("%s", line)
    if sys.stderr.isatty():  # elsewhere the logger already wrote it to stderr
        print(line, file=sys.stderr)


def run(args: Args) -> None:
    from ncil.data.splits import read_split
    from ncil.learning import resume
    from ncil.learning.training import make_job
    from ncil.pipeline.progress import logger

    check_paths(args)
    p, _ = cli.load_params(args.params)
    split = read_split(args.split)
    if args.task >= len(split["tasks"]):
        raise cli.UsageError(f"--task {args.task}: {args.split} has only {len(split['tasks'])} tasks")
    method = resolve_method(p, args, args.params)
    check_memory_flags(args, method, args.params)
    check_statistics_flag(args, method, args.params)
    if method.contrastive_by_scenario:  # per-setting lambda_con (method-spec 4.8); paper methods have none
        from ncil.pipeline.config import method_for_split

        method = method_for_split(p, method, Path(args.split).parent.name)
    job = make_job(p, split, args.task, args.seed, args.method, method, args.split)
    log = logger()
    # From here on SIGTERM or SIGINT is a request to save and stop at the next step boundary.
    flag = resume.StopFlag().install()
    try:
        log.info("train %s task %d (method %s, seed %d)", args.split, args.task, args.method, args.seed)
        _train(args, p, split, method, job, log, flag)
    except KeyboardInterrupt:  # a second Ctrl-C before the first was served
        tell(log, "interrupted again: stopped at once, without saving; a rerun resumes from the last saved state "
                  f"({resume.state_path(args.checkpoint)}) if there is one")
        raise SystemExit(resume.INTERRUPTED_EXIT) from None
    finally:
        flag.uninstall()


def _train(args: Args, p, split: dict, method, job, log, flag) -> None:
    from ncil.data.arrays import load_split
    from ncil.learning import resume, runtime
    from ncil.learning.training import run_config_snapshot, train_task
    from ncil.pipeline import io, provenance

    previous = previous_centers = previous_memory = None
    if args.task:
        # Also checks the pair (and the memory: the checkpoint records its SHA-256).
        previous = io.load_checkpoint(args.prev_checkpoint, args.prev_centers, args.prev_memory)
        expected_method = method.base_recipe if args.task == 1 else args.method
        check_previous(previous, job, p, expected_method, args.prev_checkpoint, args.split)
        previous_centers = io.read_centers(args.prev_centers)
        if args.prev_memory:
            previous_memory = io.read_memory(args.prev_memory)
    outputs = [args.checkpoint, args.centers, *([args.memory] if args.memory else []),
               *([args.statistics] if args.statistics else [])]
    io.ensure_writable(*outputs)  # before the data loads and the training starts

    # The resumable state: checked whole and against this job (params, split, data, code) before the data loads.
    device = runtime.resolve_device(p.runtime.device)
    state_file = resume.state_path(args.checkpoint)
    splits = ["train", "val"] if method.train_images == "train_val" else ["train"]
    identity = resume.identity(run_config_snapshot(p, job, device.type), job.identity, job.task, device.type,
                               io.sha256_file(args.prev_checkpoint) if args.task else None,
                               split, data_identity(p.dataset.name, splits), code_identity())
    state = resume.load(state_file, identity)
    here = provenance.current_platform(device, p.runtime.numerics)
    platforms = list(state.pop("platforms", [])) if state is not None else []
    earlier = [q for q in platforms if not provenance.same_platform(q, here)]
    if earlier:
        log.warning("%s was saved on another platform (%s %s, %s): the resumed checkpoint equals neither "
                    "platform's uninterrupted run", state_file, earlier[-1].get("cpu_vendor"),
                    earlier[-1].get("cpu_name"), earlier[-1].get("torch_cpu_capability"))
    if not any(provenance.same_platform(q, here) for q in platforms):
        platforms.append(here)

    def save_state(progress: dict) -> None:
        resume.save(state_file, identity, {**progress, "platforms": platforms})

    plan = resume.Plan(path=state_file, state=state, save=save_state if p.runtime.resume_every > 0 else None,
                       every=p.runtime.resume_every, stop_requested=flag)
    platform_path(args.checkpoint).unlink(missing_ok=True)
    train_data = load_split(p.dataset.name, "train")
    if method.train_images == "train_val":  # the released code trains on both (method-spec 8)
        train_data = with_validation(train_data, load_split(p.dataset.name, "val"))
    statistics = None
    try:
        if method.classifier == "fecam" and args.task > 0:  # FeCAM: frozen backbone, nothing trained
            from ncil.learning.fecam_training import frozen_task

            payload, centers, statistics = frozen_task(p, job, train_data, previous, previous_centers, log)
        elif method.adagauss:  # AdaGauss: every task its own loop; the Gaussians travel in the checkpoint
            from ncil.learning.adagauss_training import train_adagauss_task

            payload, centers = train_adagauss_task(p, job, train_data, previous, previous_centers, log, plan)
        elif method.efc:  # EFC / EFC++: E and the class covariances travel in the checkpoint (efc_training)
            from ncil.learning.efc_training import train_efc_task

            payload, centers = train_efc_task(p, job, train_data, previous, previous_centers, log, plan)
        elif method.classifier == "ncm":  # NCM over prototypes, moved after each task by the drift estimate
            from ncil.learning.drift_training import ncm_task

            payload, centers = ncm_task(p, job, train_data, previous, previous_centers, log, plan)
        elif method.exemplars_per_class:
            payload, centers, memory = train_task(p, job, train_data, previous, previous_centers, log, plan,
                                                  previous_memory=previous_memory)
        else:
            payload, centers = train_task(p, job, train_data, previous, previous_centers, log, plan)
            if method.classifier == "fecam":  # task 0 of FeCAM: its classes' statistics under the trained backbone
                from ncil.learning.fecam_training import task_statistics

                statistics = task_statistics(p, job, train_data, payload)
    except resume.Preempted as stop:
        tell(log, stop_line(stop, flag, state_file))
        raise SystemExit(flag.exit_status) from None
    # The checkpoint goes last and records the centers' (and the memory's, the statistics') hash: a job killed between the
    # writes leaves no checkpoint, so the outputs never look complete with old and new files side by side.
    Path(args.checkpoint).unlink(missing_ok=True)
    io.write_centers(args.centers, centers, task=args.task, feature_dim=centers["center"].shape[1])
    if method.exemplars_per_class:
        io.write_memory(args.memory, memory, task=args.task, per_class=method.exemplars_per_class)
    if statistics is not None:
        io.write_statistics(args.statistics, statistics, task=args.task, feature_dim=statistics["mean"].shape[1])
    io.save_checkpoint(args.checkpoint, payload, centers_file=args.centers, memory_file=args.memory,
                       statistics_file=args.statistics)
    io.write_json(platform_path(args.checkpoint),
                  platform_sidecar(here, args.checkpoint, io.sha256_file(args.checkpoint), earlier))
    resume.remove(state_file)  # the task is complete: its outputs supersede the state
    log.info("wrote %s", " and ".join(outputs))
