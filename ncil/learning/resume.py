"""The resumable state of one training task: its schema, save, load and checks (issue 11 item 4).

A training job keeps ``resume.pt`` beside its checkpoint (``runs/.../task_<t>/resume.pt``; neither a
Snakemake nor a DVC output): written at the end of every ``runtime.resume_every`` epochs and when the job
is told to stop (SIGTERM, Ctrl-C), read when the job starts again, removed once the checkpoint and the
centers are written. A resumed task gives the bytes an uninterrupted one gives, so the state holds everything
the rest of the task depends on:

* ``identity``: what the task is and what it reads: the params (the run's config snapshot, the job, the
  task, the device type), the previous checkpoint's SHA-256, the split record, the SHA-256 of the prepared
  data files it trains on (from the data's manifest) and of every package file the train step runs (its
  import closure, as dvc.yaml lists it). A state whose identity differs is refused (exit 2), naming the
  first field that differs and what changed (params, previous checkpoint, split, data or code);
* ``progress``: the position (``epoch``, 0-based, and ``step``, the steps of that epoch already
  taken; DyTox adds its ``phase``, task or fine-tuning, and the exemplar memory herding chose before the
  fine-tuning: ``ncil.learning.dytox_training``), the model, optimiser and scheduler, every random stream (Python ``random``, NumPy's global
  generator, torch's CPU generator, CUDA's when on CUDA, the task's data generator now and at the start
  of the epoch, from which the epoch's data order is drawn again), PR's class centers once computed,
  the epoch history and the running counters of the epoch.

Refused, not discarded: a state can hold hours of training, and the change may be undone (a reverted
edit, the previous data restored), so the choice to throw it away is left to the user, who is told the
one command that does (as for a damaged state). Resuming anyway would give a checkpoint that matches
neither the old nor the new inputs' uninterrupted run.

The file is a plain dict of tensors and primitives (``torch.load(weights_only=True)``) with a
``content_sha256`` over the rest (``ncil.pipeline.io.content_digest``), written atomically through ``ncil.pipeline.io``:
a job killed inside the write leaves the previous state in place.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np

from ncil.pipeline import io

STATE_NAME = "resume.pt"
RESUME_FORMAT = 2  # 2: the identity holds the split record, the data's and the code's SHA-256
# 128 + SIGTERM: the status of a process that SIGTERM ended, which is what SLURM and Snakemake already
# treat as "terminated" (requeue / retry); apart from ncil's 1 (a fault) and 2 (an expected error).
PREEMPTED_EXIT = 128 + signal.SIGTERM
INTERRUPTED_EXIT = 128 + signal.SIGINT  # Ctrl-C: the shell's status of a process that SIGINT ended
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PROGRESS_KEYS = ("epoch", "step", "model", "optimizer", "scheduler", "random", "pr_centers", "history", "counters")


class Preempted(Exception):
    """Training stopped on request (``epoch`` 0-based, ``step`` steps done in it); ``saved``: whether a
    state at that position is on disk (False only when the request came before the first step of a
    task that had no state: nothing was trained, nothing is lost)."""

    def __init__(self, epoch: int, step: int, steps: int, task: int, saved: bool = True):
        self.epoch, self.step, self.steps, self.task, self.saved = epoch, step, steps, task, saved
        super().__init__(f"preempted at {describe_position(epoch, step, steps)} of task {task}")


def never() -> bool:
    return False


@dataclass(frozen=True)
class Plan:
    """How a training task saves and resumes; the CLI fills it in (the default: neither)."""

    path: Path | None = None  # the state file (for messages)
    state: dict | None = None  # the progress of a loaded, checked state (``load``)
    save: Callable[[dict], None] | None = None  # writes the state file; None: nothing is saved
    every: int = 0  # epochs between periodic saves (runtime.resume_every; 0: none)
    stop_requested: Callable[[], bool] = never  # read at every step boundary


def state_path(checkpoint: str | Path) -> Path:
    """Where the resumable state of the task writing ``checkpoint`` lives: beside it."""
    return Path(checkpoint).with_name(STATE_NAME)


def describe_position(epoch: int, step: int, steps: int) -> str:
    """A position for people, numbered as the log's epoch lines are: "epoch 3 step 9/9" = epoch 3 done."""
    if step == 0 and epoch > 0:
        return f"epoch {epoch} step {steps}/{steps}"
    return f"epoch {epoch + 1} step {step}/{steps}"


def identity(config: dict, job: dict, task: int, device: str, previous_sha256: str | None, split: dict,
             data: dict[str, str | None], code: dict[str, str]) -> dict:
    """What a state must match to be resumed (pure): the first differing field is named on refusal.

    ``split``: the split record (class order, tasks); ``data``: prepared file -> SHA-256 (the manifest's);
    ``code``: package file -> SHA-256, for every file the train step runs.
    """
    return {
        "format_version": RESUME_FORMAT,
        "task": task,
        "job": dict(job),
        "config": config,
        "device": device,
        "previous_checkpoint_sha256": previous_sha256,
        "split": dict(split),
        "data": dict(data),
        "code": dict(code),
    }


# What changed, by the identity's top-level field (the rest is the params: config, job, task, device).
CHANGED = {
    "previous_checkpoint_sha256": "another previous checkpoint (--prev-checkpoint was retrained or replaced)",
    "split": "another split (the --split file changed)",
    "data": "other data (the prepared data changed: a new prepare)",
    "code": "other training code (a file the train step runs changed)",
}


def mismatch_message(path: Path, diff: tuple) -> str:
    """The refusal of a state whose identity differs (pure): the field, both values, what changed, the way out."""
    field, want, got = diff
    top = field.split(".")[1].split("[")[0] if "." in field else field
    return (f"{path}: {field}: expected {want!r}, found {got!r}: this resumable state belongs to "
            f"{CHANGED.get(top, 'another configuration')}; {_delete_hint(path)}")


def first_difference(expected, found, where: str = "identity"):
    """(field path, expected, found) of the first difference, in ``expected``'s key order; None if equal (pure)."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in list(expected) + [k for k in found if k not in expected]:
            if key not in found or key not in expected:
                return f"{where}.{key}", expected.get(key, "<absent>"), found.get(key, "<absent>")
            diff = first_difference(expected[key], found[key], f"{where}.{key}")
            if diff is not None:
                return diff
        return None
    if isinstance(expected, (list, tuple)) and isinstance(found, (list, tuple)) and len(expected) == len(found):
        for i, (a, b) in enumerate(zip(expected, found)):
            diff = first_difference(a, b, f"{where}[{i}]")
            if diff is not None:
                return diff
        return None
    if type(expected) is not type(found) or expected != found:
        return where, expected, found
    return None


# --- Random streams ------------------------------------------------------------------------------


def capture_random(generator, device) -> dict:
    """Every random stream training draws from, as tensors and primitives (no NumPy arrays)."""
    import torch

    name, key, pos, has_gauss, gauss = np.random.get_state()
    streams = {
        "python": random.getstate(),
        "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "torch_cpu": torch.get_rng_state(),
        "data": generator.get_state(),
    }
    if device.type == "cuda":
        streams["torch_cuda"] = torch.cuda.get_rng_state(device)
    return streams


def restore_random(streams: dict, generator, device) -> None:
    """Set every stream ``capture_random`` recorded; the data generator to ``streams["data"]``."""
    import torch

    version, internal, gauss_next = streams["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = streams["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(streams["torch_cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(streams["torch_cuda"], device)
    generator.set_state(streams["data"])


def _cpu(value):
    """Tensors of a (nested) state moved to the CPU, for a file that loads anywhere."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


@dataclass(frozen=True)
class Position:
    epoch: int  # 0-based epoch of the next step
    step: int  # steps of that epoch already taken (0: the epoch has not started)


def capture(position: Position, net, optimizer, scheduler, generator, epoch_generator, device, pr_centers,
            history: list[dict], counters: dict) -> dict:
    """The progress part of a state at ``position`` (``epoch_generator``: the data generator's state at
    the start of that epoch, before its data order was drawn)."""
    streams = capture_random(generator, device)
    streams["data_epoch_start"] = epoch_generator
    return _cpu({
        "epoch": position.epoch,
        "step": position.step,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "random": streams,
        "pr_centers": pr_centers,
        "history": [dict(h) for h in history],
        "counters": dict(counters),
    })


def restore(plan: Plan, state: dict, net, optimizer, scheduler, generator, device, epochs: int,
            steps: int) -> tuple[list[dict], Position]:
    """Put a loaded state back into a training loop: check that its position fits the task (``check_position``),
    load the weights, optimiser, schedule and random streams, and return the epoch history (interned, so the
    checkpoint's bytes are the uninterrupted run's) and the position to continue from."""
    check_position(plan.path, state, epochs, steps)
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    restore_random(state["random"], generator, device)
    return interned_history(state["history"]), Position(state["epoch"], state["step"])


def stopper(plan: Plan, save: Callable, steps: int, task: int) -> Callable:
    """A training loop's ``stop(position, epoch_generator, counters, saved=False)``: save the state at ``position``
    with ``save`` (unless ``saved``: it is on disk already) and raise ``Preempted``; where ``plan`` saves nothing,
    raise it at once, saying that no state was kept."""

    def stop(position: Position, epoch_generator, counters: dict | None, saved: bool = False):
        if plan.save is None:
            raise Preempted(position.epoch, position.step, steps, task, saved=False)
        if not saved:
            save(position, epoch_generator, counters)
        raise Preempted(position.epoch, position.step, steps, task)

    return stop


def after_epoch(plan: Plan, save: Callable, stop: Callable, done: int, epochs: int, generator) -> None:
    """The end of epoch ``done`` (1-based) of ``epochs`` in a training loop: save the state every ``plan.every``
    epochs (not after the last: the task's outputs follow), then honour a stop request at this boundary with
    ``stop`` (``stopper``'s), which does not save again what was just saved."""
    saved = False
    if plan.save is not None and plan.every and done % plan.every == 0 and done < epochs:
        save(Position(done, 0), generator.get_state(), None)
        saved = True
    if plan.stop_requested():
        stop(Position(done, 0), generator.get_state(), None, saved=saved)


def interned_history(history: list[dict]) -> list[dict]:
    """A loaded state's epoch history with its keys and text values interned as the code's own literals (pure):
    pickle writes a string once per object, so strings unpickled from the state would add bytes to the
    checkpoint that an uninterrupted run has not (a key, or DyTox's ``phase`` value, written twice)."""
    import sys

    def same(value):
        return sys.intern(value) if isinstance(value, str) else value

    return [{sys.intern(k): same(v) for k, v in h.items()} for h in history]


# --- The file ------------------------------------------------------------------------------------


def encode(identity_: dict, progress: dict) -> bytes:
    """The bytes of a state file (pure apart from torch's serialiser)."""
    import torch

    payload = {"format_version": RESUME_FORMAT, "identity": identity_, "progress": progress}
    payload["content_sha256"] = io.content_digest(payload)
    buffer = BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save(path: str | Path, identity_: dict, progress: dict) -> None:
    """Write the state atomically (a temporary file beside ``path``, renamed onto it)."""
    io.write_bytes(path, encode(identity_, progress))


def _delete_hint(path: Path) -> str:
    return f"delete it (rm {path}) to train this task again from epoch 1"


def load(path: str | Path, expected_identity: dict) -> dict | None:
    """The progress of the state at ``path`` (None where there is none), checked whole and against
    ``expected_identity``. A file that does not load, fails its hash, lacks a field or belongs to another
    configuration is an ``ArtifactError`` naming it: never silently ignored."""
    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        fh = open(path, "rb")  # opened apart from the load: an unreadable file is not a corrupt one
    except OSError as err:  # a folder in its place, no read permission, an I/O error
        raise io.ArtifactError(f"{path}: cannot read the resumable state ({err.strerror or err}); check the "
                               f"file and its permissions (rm {path} trains this task again from epoch 1)") from None
    with fh:
        try:
            payload = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, zip errors...
            raise io.ArtifactError(f"{path}: corrupt or truncated resumable state ({type(err).__name__}: "
                                   f"{' '.join(str(err).split())}); {_delete_hint(path)}") from None
    if not isinstance(payload, dict) or payload.get("format_version") != RESUME_FORMAT:
        found = payload.get("format_version") if isinstance(payload, dict) else type(payload).__name__
        raise io.ArtifactError(f"{path}: format_version: expected a resumable state of format {RESUME_FORMAT}, "
                               f"found {found!r}; {_delete_hint(path)}")
    stored = payload.pop("content_sha256", None)
    if stored != io.content_digest(payload):
        raise io.ArtifactError(f"{path}: content_sha256: the state's values do not match the hash written with "
                               f"them (modified or corrupted after it was saved); {_delete_hint(path)}")
    diff = first_difference(expected_identity, payload.get("identity"))
    if diff is not None:
        raise io.ArtifactError(mismatch_message(path, diff))
    progress = payload.get("progress")
    missing = [k for k in PROGRESS_KEYS if not isinstance(progress, dict) or k not in progress]
    if missing:
        raise io.ArtifactError(f"{path}: progress.{missing[0]}: missing from the resumable state; {_delete_hint(path)}")
    return progress


def check_position(path: str | Path, progress: dict, epochs: int, steps: int) -> None:
    """Refuse a position outside this task's ``epochs`` x ``steps`` (say, the data changed under it)."""
    epoch, step = progress["epoch"], progress["step"]
    counted = progress["counters"].get("steps_per_epoch")
    if counted != steps:
        raise io.ArtifactError(f"{path}: progress.counters.steps_per_epoch: expected {steps} (this task's training "
                               f"data), found {counted!r}; {_delete_hint(Path(path))}")
    if not (0 <= epoch <= epochs and 0 <= step < steps and (epoch < epochs or step == 0)):
        raise io.ArtifactError(f"{path}: progress.epoch/step: ({epoch}, {step}) is outside the task's {epochs} "
                               f"epochs of {steps} steps; {_delete_hint(Path(path))}")


def remove(path: str | Path) -> None:
    """Remove a state (the task is complete); an absent one is fine."""
    Path(path).unlink(missing_ok=True)


# --- Stop requests (SIGTERM, SIGINT) -------------------------------------------------------------


class StopFlag:
    """Set by SIGTERM (preemption) or SIGINT (Ctrl-C); the training loop reads it at every step boundary.
    Callable: ``flag()`` -> bool; ``signum``: the first signal received (None: none). A second Ctrl-C
    raises ``KeyboardInterrupt`` (for a job still loading its data, or inside a long step)."""

    def __init__(self):
        self.requested = False
        self.signum = None
        self._previous = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once, not at the next step boundary
        self.requested = True
        self.signum = self.signum or signum

    def install(self) -> StopFlag:
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def uninstall(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}

    @property
    def exit_status(self) -> int:
        """The job's exit status after the stop: 130 for Ctrl-C, else 143 (as if the signal had ended it)."""
        return INTERRUPTED_EXIT if self.signum == signal.SIGINT else PREEMPTED_EXIT
