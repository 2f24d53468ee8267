"""One task of DyTox or DyTox + PKS (Table 4; docs/dytox.md), readable top to bottom.

``train_dytox_task`` is what ``ncil.learning.training.train_task`` runs for a method on backbone ``dytox``: it
takes loaded objects (config, split, data, task t-1's checkpoint, centers and exemplar memory) and returns the
new checkpoint payload, centers rows and memory rows; only the CLI touches disk.

    1. the model: a fresh ``DyToxNet`` for task 0; else task t-1's, expanded by a task token, a classifier and
       a divergence head; task t-1's model, frozen and in eval mode, is the teacher
    2. the data: task t's training images and the memory's (each once), uint8 on the device
    3. training (``phase`` base or task: ``ncil.models.dytox.apply_phase``), a fresh optimiser of the
       method's recipe (``optim.dytox_recipe``) over the trainable parameters; each step is
       ``ncil.methods.dytox.loss_terms``
    4. herding (``ncil.methods.exemplars.select_exemplars``) of task t's classes on the concatenated task
       embeddings of their images, without augmentation: the memory keeps task t-1's rows and adds these
    5. from task 1 on, the balanced fine-tuning on the memory alone (phase finetune: encoder frozen, L_clf only)
    6. class centers of task t's classes on the newest task embedding (an artifact as every method's; DyTox
       does not read them)

Resumable (``ncil.learning.resume``, as every method's task): the state holds the phase (base or task, then
finetune) besides the position, model, optimiser, scheduler and every random stream, and from the fine-tuning on
the exemplar memory herding chose (the model that chose it is gone by then). A state saved after the training
phase's last epoch resumes at herding; a resumed task ends in the bytes of an uninterrupted one.

The optimiser is ``ncil.learning.optim.dytox_recipe``'s: the train section's Adam recipe, or under ``dytox_optimizer:
adamw`` the released AdamW with its warm-up cosine schedule (no weight decay where ``weight_decayed`` says so).

Not yet here (docs/dytox.md section 9): RandAugment and repeated augmentation (the grid's augmentation is used).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ncil.data import arrays, augment
from ncil.data.scenario import remap_labels
from ncil.learning import optim, resume, runtime
from ncil.learning.training import (EPOCH_COUNTERS, append_centers, empty_centers, epoch_order, history_without_timing,
                                    run_config_snapshot, torch_cpu_generator)
from ncil.methods.dytox import DyToxLossConfig, loss_terms, total_loss
from ncil.methods.exemplars import reduce_memory, select_exemplars
from ncil.pipeline import io
from ncil.methods.prototypes import class_centers
from ncil.models.dytox import DyToxNet, apply_phase, load_dytox, weight_decayed
from ncil.pipeline.config import MethodConfig, Params, resolve_precision
from ncil.pipeline.progress import EpochProgress

HEAD_LAYOUT = "dytox"  # the checkpoint's head_layout: one classifier per task, logits in class order
MEMORY_KEYS = ("index", "class_id", "original_class", "task", "rank")  # the memory rows' columns (io.MEMORY_COLUMNS)


def resumed_phase(state: dict | None, path, training_phase: str, finetunes: bool) -> str | None:
    """The phase a loaded state resumes (None: no state), checked against this task's phases (pure): its
    training phase (``base`` for task 0, else ``task``), then ``finetune`` where the task fine-tunes."""
    if state is None:
        return None
    phases = (training_phase, "finetune") if finetunes else (training_phase,)
    phase = state.get("phase")
    if phase not in phases or (phase == "finetune" and state.get("memory") is None):
        memory = " (with the exemplar memory for finetune)" if finetunes else ""
        raise io.ArtifactError(f"{path}: progress.phase: expected one of {', '.join(phases)}{memory}, found {phase!r}: "
                               f"not a state of this DyTox task; delete it (rm {path}) to train this task again "
                               "from epoch 1")
    return phase


def loss_config(method: MethodConfig) -> DyToxLossConfig:
    """The method's DyTox objective: distillation, lambda_div and PKS's options (docs/dytox.md sections 2-3)."""
    return DyToxLossConfig(distillation=method.dytox_distillation, divergence=method.divergence, pks=method.pks,
                           pks_weighting=method.pks_weighting, pks_p=method.pks_p, pks_detach=method.pks_detach,
                           cls_pairing=method.pks_cls_pairing)


def memory_rows(memory: dict, train_split: arrays.Split, label_map: dict[int, int], classes: list[int]) -> np.ndarray:
    """The memory's training rows (int64), after checking them against the split this task trains on: each
    row exists, holds the image of the class the memory says, and the classes are exactly ``classes``
    (the old ones). A memory of another split, data set or class order is refused here."""
    index = np.asarray(memory["index"], dtype=np.int64)
    if len(index) and index.max() >= len(train_split.labels):
        raise ValueError(f"exemplar memory: index: row {int(index.max())} is past the training split's "
                         f"{len(train_split.labels)} images (a memory of another data set or split)")
    original = train_split.labels[index].astype(np.int64)
    if not np.array_equal(original, np.asarray(memory["original_class"], dtype=np.int64)):
        raise ValueError("exemplar memory: original_class: the rows do not hold these classes' images in the "
                         "training split (a memory of another data set or split)")
    remapped = np.asarray([label_map[int(o)] for o in original], dtype=np.int64)
    if not np.array_equal(remapped, np.asarray(memory["class_id"], dtype=np.int64)):
        raise ValueError("exemplar memory: class_id: not the class order of this run")
    if sorted(set(original.tolist())) != sorted(classes):
        raise ValueError(f"exemplar memory: holds classes {sorted(set(original.tolist()))}, expected the classes "
                         f"seen before this task {sorted(classes)}")
    return index


@torch.no_grad()
def task_embeddings(net: DyToxNet, x: torch.Tensor, batch_size: int, device: torch.device, mean, std,
                    precision: str = "fp32") -> torch.Tensor:
    """Every task embedding (N, t, D) of uint8 images ``x`` in eval mode (no augmentation), float32 on the CPU."""
    net.eval()
    out = []
    for start in range(0, len(x), batch_size):
        batch = augment.normalize(augment.to_unit(x[start: start + batch_size].to(device)), mean, std)
        with runtime.autocast(device, precision):
            out.append(net(batch)["embeddings"].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, net.n_tasks, net.embed_dim)


def train_dytox_task(p: Params, job, train_split: arrays.Split, previous: dict | None, previous_centers: dict | None,
                     previous_memory: dict | None, logger: logging.Logger,
                     plan: resume.Plan | None = None) -> tuple[dict, dict, dict]:
    """Train task ``job.task`` of a DyTox method; return (checkpoint payload, centers rows, memory rows)."""
    plan = plan or resume.Plan()
    device, generator = runtime.setup(p.runtime, job.seed, job.task)
    precision = resolve_precision(p.runtime.precision, device.type, job.method.preset)
    method = job.method
    label_map = remap_labels(job.class_order)
    seen = [c for t in job.tasks[: job.task + 1] for c in t]
    new_classes, old_classes = list(job.tasks[job.task]), seen[: len(seen) - len(job.tasks[job.task])]
    n_seen, n_old = len(seen), len(old_classes)
    channels = p.dataset.channels

    # 1. The model and the teacher (task t-1's model after its fine-tuning, frozen, eval mode).
    teacher = None
    if job.task == 0:
        net = DyToxNet(p.model, channels, len(new_classes), divergence=method.divergence > 0)
    else:
        net = load_dytox(p.model, channels, previous["model"])
        if net.n_classes != n_old:
            raise ValueError(f"previous checkpoint: {net.n_classes} classes, expected the {n_old} seen before task {job.task}")
        teacher = load_dytox(p.model, channels, previous["model"])
        teacher.divergence = None  # the teacher's logits, patches and embeddings only
        teacher.to(device).eval().requires_grad_(False)
        net.use_divergence = method.divergence > 0
        net.expand(len(new_classes), generator=torch_cpu_generator(generator))
    net.to(device)

    # 2. Task t's images and the memory's, uint8 on the device; labels after the class-order remap.
    new_rows, new_images, new_labels = arrays.select_classes(train_split, new_classes, label_map)
    old_memory = None
    if job.task > 0:
        mem_rows = memory_rows(previous_memory, train_split, label_map, old_classes)
        old_memory = {k: np.asarray(previous_memory[k]) for k in ("index", "class_id", "original_class", "task", "rank")}
        images = np.concatenate([new_images, train_split.images[mem_rows]])
        labels = np.concatenate([new_labels, np.asarray(previous_memory["class_id"], dtype=np.int64)])
    else:
        images, labels = new_images, new_labels
    x_all = arrays.to_uint8_tensor(images).to(device)  # (N, C, H, W)
    y_all = torch.from_numpy(labels).to(device)
    x_new = x_all[: len(new_labels)]
    if method.repeated_aug and arrays.repeated_augmentation_size(len(y_all), p.train.batch_size)[1] == 0:
        raise ValueError(f"method.{job.method_name}.repeated_aug: DeiT's repeated-augmentation sampler keeps "
                         f"floor(n / 256) * 256 images per epoch; task {job.task} trains on n = {len(y_all)}, "
                         f"which keeps none (expected at least 256 images, or repeated_aug: false)")
    spec = augment.spec_from_dataset(p.dataset)
    cfg = loss_config(method)

    def run_epochs(phase: str, x: torch.Tensor, y: torch.Tensor, recipe: optim.Recipe, with_teacher: bool,
                   earlier: list[dict], state: dict | None = None, memory: dict | None = None) -> list[dict]:
        """``recipe.epochs`` epochs of ``phase`` on (x, y): a fresh optimiser over the phase's trainable parameters;
        the task's history so far (``earlier``, or the state's) with this phase's epochs after it. ``state``: a
        state of this phase to resume from (ncil.learning.training.train_task's loop, with the phase and, in the
        fine-tuning, the ``memory`` it trains on saved beside)."""
        steps = (arrays.repeated_augmentation_size(len(y), p.train.batch_size)[1] if method.repeated_aug
                 else -(-len(y) // p.train.batch_size))
        if steps == 0:  # repeated_aug on fewer than 256 rows (checked for the training phase at the task's start)
            logger.warning("task %d: %s skipped: repeated_aug keeps floor(%d / 256) * 256 = 0 rows per epoch, as the "
                           "released sampler, which trains no step then", job.task, phase, len(y))
            return list(earlier)
        apply_phase(net, phase)
        trainable = [(name, q) for name, q in net.named_parameters() if q.requires_grad]
        groups = (optim.decay_groups(trainable, weight_decayed, recipe.weight_decay) if recipe.optimizer == "adamw"
                  else [q for _, q in trainable])  # adamw: no decay on biases, norms, tokens, positional embedding
        optimizer, scheduler = optim.build_optimizer(groups, recipe)
        progress = EpochProgress(logger, f"task {job.task} {phase}", recipe.epochs, steps)
        history, start = list(earlier), resume.Position(0, 0)
        if state is not None:
            history, start = resume.restore(plan, state, net, optimizer, scheduler, generator, device, recipe.epochs,
                                            steps)
            logger.info("task %d: resuming %s from %s after %s", job.task, phase, plan.path,
                        resume.describe_position(start.epoch, start.step, steps))
        beside = {"phase": phase, "memory": None if memory is None else {k: torch.from_numpy(memory[k]) for k in MEMORY_KEYS}}

        def save(position: resume.Position, epoch_generator, counters: dict | None) -> None:
            plan.save({**resume.capture(position, net, optimizer, scheduler, generator, epoch_generator, device, None,
                                        history, {"steps_per_epoch": steps, **(counters or {})}), **beside})

        stop = resume.stopper(plan, save, steps, job.task)

        # Before the first step of this process (the task's first phase, or the resumed one): the state on disk
        # (if any) is this very position. The fine-tuning after a training phase in this process is not asked here.
        if (state is not None or phase != "finetune") and plan.stop_requested():
            raise resume.Preempted(start.epoch, start.step, steps, job.task, saved=state is not None)
        for epoch in range(start.epoch, recipe.epochs):
            inside = state is not None and epoch == start.epoch and start.step > 0  # resumed inside this epoch
            net.train()
            progress.start_epoch()
            if inside:
                generator.set_state(state["random"]["data_epoch_start"])
            epoch_generator = generator.get_state()  # before the epoch's data order is drawn
            order = epoch_order(len(y), p.train.batch_size, torch_cpu_generator(generator), device,
                                repeated=method.repeated_aug)
            first = 0
            if inside:
                generator.set_state(state["random"]["data"])
                progress.seen, progress.loss_sum, progress.correct = (state["counters"][k] for k in EPOCH_COUNTERS)
                first = start.step
            for step in range(first, steps):
                idx = order[step]
                xb = augment.augment_batch(x.index_select(0, idx), spec, generator)  # (B, C, H, W) float32
                yb = y[idx]
                with runtime.autocast(device, precision):
                    out = net(xb)
                    old = None
                    if with_teacher:
                        with torch.no_grad():
                            old = teacher(xb)
                    terms = loss_terms(out, yb, cfg, old, finetuning=phase == "finetune")
                    loss = total_loss(terms)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                progress.step(loss.detach(), len(yb), (out["logits"].argmax(1) == yb).sum())
                if step + 1 < steps and plan.stop_requested():
                    stop(resume.Position(epoch, step + 1), epoch_generator,
                         {k: getattr(progress, k) for k in EPOCH_COUNTERS})
            history.append({**progress.end_epoch(epoch, optimizer.param_groups[0]["lr"]), "phase": phase})
            if scheduler is not None:
                scheduler.step()
            # A stop after the training phase's last epoch too: the rerun starts at herding.
            resume.after_epoch(plan, save, stop, epoch + 1, recipe.epochs, generator)
        progress.close()
        return history

    # A resumed task: its phase (the training phase, or the fine-tuning with the memory herding chose).
    training_phase = "base" if job.task == 0 else "task"
    finetunes = job.task > 0 and method.finetune_epochs > 0
    phase = resumed_phase(plan.state, plan.path, training_phase, finetunes)

    if phase != "finetune":
        # 3. Training on task t's images and the memory's.
        history = run_epochs(training_phase, x_all, y_all, optim.dytox_recipe(p.train, method, job.task),
                             with_teacher=teacher is not None, earlier=[], state=plan.state)
        del teacher

        # 4. Herding on task t's classes (features: every task embedding, L2-normalised by select_exemplars).
        embeddings = task_embeddings(net, x_new, p.train.eval_batch_size, device, p.dataset.mean, p.dataset.std,
                                     precision)
        chosen = select_exemplars(embeddings.reshape(len(new_labels), -1).numpy(), new_labels,
                                  method.exemplars_per_class, rule=method.exemplar_rule)
        new_memory = {
            "index": new_rows[chosen["index"]].astype(np.int64),
            "class_id": chosen["label"].astype(np.int64),
            "original_class": train_split.labels[new_rows[chosen["index"]]].astype(np.int64),
            "task": np.full(len(chosen["index"]), job.task, dtype=np.int64),
            "rank": chosen["rank"].astype(np.int64),
        }
        memory = new_memory if old_memory is None else {
            k: np.concatenate([reduce_memory(old_memory, method.exemplars_per_class)[k], new_memory[k]])
            for k in new_memory}
    else:  # the training phase and herding are done: the state holds their model and memory
        del teacher
        history, memory = [], {k: plan.state["memory"][k].numpy() for k in MEMORY_KEYS}

    # 5. Balanced fine-tuning on the memory alone (tasks t >= 1): encoder frozen, L_clf only, constant lr.
    if finetunes:
        x_mem = arrays.to_uint8_tensor(train_split.images[memory["index"]]).to(device)
        y_mem = torch.from_numpy(memory["class_id"]).to(device)
        history = run_epochs("finetune", x_mem, y_mem, optim.dytox_finetune_recipe(p.train, method), with_teacher=False, earlier=history,
                             state=plan.state if phase == "finetune" else None, memory=memory)

    # 6. Class centers of task t's classes on the newest task embedding, after task t-1's rows.
    features = task_embeddings(net, x_new, p.train.eval_batch_size, device, p.dataset.mean, p.dataset.std,
                               precision)[:, -1]  # (N, D)
    class_ids, centers = class_centers(features, torch.from_numpy(new_labels))
    rows = empty_centers(net.feature_dim) if previous_centers is None else previous_centers
    rows = append_centers(rows, features, new_labels, class_ids, centers, label_map, n_seen, job.task)

    payload = {
        "task": job.task,
        "identity": job.identity,
        "class_order": list(job.class_order),
        "seen_classes": seen,
        "n_outputs": n_seen,
        "rotations": 1,
        "head_layout": HEAD_LAYOUT,
        "classes_per_task": net.classes_per_task,
        "backbone": method.backbone,
        "config": run_config_snapshot(p, job, device.type),
        "history": history_without_timing(history),
        "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
    }
    return payload, rows, memory
