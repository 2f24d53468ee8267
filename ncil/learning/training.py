"""One task's training, readable top to bottom (design.md 5; method-spec 5.2; paper Algorithm 1).

``train_task`` takes loaded objects (config, split, data, the previous task's checkpoint and
centers) and returns the new checkpoint payload and centers rows; only the CLI touches disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ncil.learning import optim, resume, runtime
from ncil.pipeline.config import (BASE_RECIPE_FIELDS, MethodConfig, Params, non_default_fields, resolve_precision,
                                  resolve_static_shapes, to_dict)
from ncil.data import arrays, augment
from ncil.data.scenario import remap_labels
from ncil.methods import official_step as official
from ncil.methods.objective import OldKnowledge, needs_teacher, rotations, step_loss
from ncil.methods.prototypes import class_centers, gaussian_radius, global_radius
from ncil.models.network import IncrementalNet, build_network, load_network
from ncil.pipeline.progress import EpochProgress


EPOCH_COUNTERS = ("seen", "loss_sum", "correct")  # EpochProgress's running sums inside an epoch


@dataclass(frozen=True)
class TaskJob:
    """What one training job needs to know about its place in the grid."""

    task: int
    seed: int
    class_order: list[int]  # original class ids in learning order
    tasks: list[list[int]]  # original class ids of tasks 0..task (at least)
    method_name: str  # incremental method (the base recipe's name for task 0)
    method: MethodConfig  # for task 0: any method of the base recipe (only its recipe fields matter)
    identity: dict  # who this job is: dataset, split, method, seed, task (stored in the checkpoint)


def make_job(p, split: dict, task: int, seed: int, method_name: str, method, split_file: str):
    """The TaskJob of task ``task`` of ``split`` (pure); ``split_file``'s folder names the split."""
    return TaskJob(task=task, seed=seed, class_order=split["class_order"], tasks=split["tasks"],
                   method_name=method_name, method=method,
                   identity={"dataset": p.dataset.name, "split": str(Path(split_file).parent.name),
                             "method": method_name, "seed": seed, "task": task})


def method_snapshot(job: TaskJob) -> dict:
    """The method settings that shaped this task: its preset and every option that differs from the default.

    Task 0 records only the base recipe's fields. Options left at their defaults are not listed, so
    an option added later (defaulting to the earlier behaviour) leaves existing checkpoints' bytes as
    they are; ``MethodConfig`` holds the defaults.
    """
    if job.task == 0:
        return {"base_recipe": job.method_name, "preset": job.method.preset,
                **non_default_fields(job.method, BASE_RECIPE_FIELDS)}
    return {"preset": job.method.preset, **non_default_fields(job.method)}


def run_config_snapshot(p: Params, job: TaskJob, device_type: str) -> dict:
    """The resolved configuration a checkpoint carries (everything that shaped its weights).

    ``runtime.static_shapes`` is recorded (as true) only where it resolved to true, so the checkpoints of
    the compacted step, the default grid's, keep their bytes (``resolve_static_shapes``).
    """
    static = resolve_static_shapes(p.runtime.static_shapes, p.runtime.compile)
    return {
        "preset": job.method.preset,
        "order_seed": p.order_seed,
        "seed": job.seed,
        "dataset": to_dict(p.dataset),
        "model": to_dict(p.model),
        "train": to_dict(p.train),
        "runtime": {"threads": p.runtime.threads, "numerics": p.runtime.numerics,
                    "precision": resolve_precision(p.runtime.precision, device_type, job.method.preset),
                    **({"static_shapes": True} if static else {})},
        "method": job.method_name,
        "method_config": method_snapshot(job),
    }


def check_memory_use(job: TaskJob, memory: dict | None) -> None:
    """Refuse an exemplar memory where the method keeps none, and a missing one where it trains on one (pure).

    A method with ``exemplars_per_class`` 0 (every NECIL method) learns task t from task t's images alone: a
    memory handed to it is an error, never silently ignored or used. A rehearsal method needs task t-1's
    memory from task 1 on, and none in task 0.
    """
    kept = job.method.exemplars_per_class
    if not kept and memory is not None:
        raise ValueError(f"method {job.method_name}: keeps no exemplars (exemplars_per_class 0, a non-exemplar "
                         f"method): task {job.task} takes no exemplar memory, got one of {len(memory['index'])} images")
    if kept and job.task == 0 and memory is not None:
        raise ValueError(f"method {job.method_name}: task 0 starts without an exemplar memory, got one")
    if kept and job.task > 0 and memory is None:
        raise ValueError(f"method {job.method_name}: task {job.task} trains on task {job.task - 1}'s exemplar "
                         f"memory (exemplars_per_class {kept}): none given")


def training_classes(job: TaskJob) -> list[int]:
    """Original ids of the classes whose training images task ``job.task`` may use."""
    if job.task > 0 and job.method.train_on == "seen":
        return [c for t in job.tasks[: job.task + 1] for c in t]
    return list(job.tasks[job.task])


def example_image(p: Params, device) -> torch.Tensor:
    """One black image of the data set's shape (1, C, H, W) on ``device``: what ``runtime.fill_caches`` runs."""
    return torch.zeros(1, p.dataset.channels, p.dataset.image_size, p.dataset.image_size, device=device)


def old_knowledge(previous: dict, previous_centers: dict, method: MethodConfig, p: Params, device) -> OldKnowledge:
    """The frozen old model F_{t-1} (eval mode, no gradients) and the stored class centers."""
    teacher = None
    if needs_teacher(method):
        teacher = load_network(p.model, p.dataset.channels, previous["model"], method.backbone).to(device)
        teacher.eval().requires_grad_(False)
        if runtime.autocast_enabled(device, resolve_precision(p.runtime.precision, device.type, method.preset)):
            runtime.cast_frozen_weights(teacher.backbone, torch.bfloat16)  # once per task, not at every step
        runtime.maybe_compile(teacher.backbone, p.runtime.compile, example_image(p, device))
    spreads = torch.from_numpy(previous_centers["spread"])
    return OldKnowledge(
        teacher=teacher,
        centers=torch.from_numpy(previous_centers["center"]).to(device),  # (K_old, D)
        radius=float(global_radius(spreads)) if len(spreads) else 0.0,
    )


def train_task(
    p: Params,
    job: TaskJob,
    train_split: arrays.Split,
    previous: dict | None,
    previous_centers: dict | None,
    logger: logging.Logger,
    plan: resume.Plan | None = None,
    previous_memory: dict | None = None,
) -> tuple[dict, dict] | tuple[dict, dict, dict]:
    """Train task ``job.task``; return (checkpoint payload, centers rows).

    ``plan`` (``ncil.learning.resume``): a state to resume from, how to save one (every ``plan.every`` epochs
    and when ``plan.stop_requested()``, after which ``resume.Preempted`` is raised). Resumed or not,
    the payload and rows are the same bytes.

    A rehearsal method (``exemplars_per_class > 0``: DyTox, ``ncil.learning.dytox_training``) takes task t-1's
    exemplar memory (``previous_memory``, from task 1 on) and also returns its own: (payload, centers rows,
    memory rows). Any other method is refused a memory (``check_memory_use``): it never sees an old image.
    """
    check_memory_use(job, previous_memory)
    if job.method.classifier == "fecam" and job.task > 0:
        raise ValueError(f"method {job.method_name}: FeCAM trains nothing after task 0 (frozen backbone): task "
                         f"{job.task} is ncil.learning.fecam_training.frozen_task")
    if job.method.efc and job.task > 0:
        raise ValueError(f"method {job.method_name}: EFC's tasks t >= 1 are ncil.learning.efc_training.train_efc_task")
    if job.method.adagauss:
        raise ValueError(f"method {job.method_name}: AdaGauss's tasks are "
                         f"ncil.learning.adagauss_training.train_adagauss_task")
    if job.method.backbone == "dytox":
        from ncil.learning.dytox_training import train_dytox_task

        return train_dytox_task(p, job, train_split, previous, previous_centers, previous_memory, logger, plan)
    plan = plan or resume.Plan()
    device, generator = runtime.setup(p.runtime, job.seed, job.task)
    precision = resolve_precision(p.runtime.precision, device.type, job.method.preset)
    static = resolve_static_shapes(p.runtime.static_shapes, p.runtime.compile)  # the same shapes every step
    method = job.method
    rot = rotations(method)
    label_map = remap_labels(job.class_order)
    seen = [c for t in job.tasks[: job.task + 1] for c in t]
    n_seen, n_old = len(seen), len(seen) - len(job.tasks[job.task])
    is_official = official.is_official(method)  # the official preset's step (ncil.methods.official_step)
    if is_official:
        layout = official.head_layout(method, n_old, n_seen - n_old)
    n_outputs = layout.n_outputs if is_official else rot * n_seen

    # 1. The model: fresh for task 0; otherwise task t-1's weights with the head grown to n_seen classes.
    #    Official preset (method-spec 3.4): rows 0..rot*K_old-1 kept, the previous mixup rows replaced.
    if job.task == 0:
        net = build_network(p.model, p.dataset.channels, n_outputs, method.backbone)
    else:
        net = load_network(p.model, p.dataset.channels, previous["model"], method.backbone)
        if is_official:
            net.head.regrow(len(layout.rows_kept_on_growth), n_outputs)
        else:
            net.head.grow(rot * n_seen)
    net.to(device)
    runtime.maybe_compile(net.backbone, p.runtime.compile, example_image(p, device))
    old = old_knowledge(previous, previous_centers, method, p, device) if job.task > 0 else None

    # 2. The task's training data as uint8 on the device: images (N, C, H, W), labels (N,); each batch
    #    is augmented and normalised there (ncil.data.augment), with no per-image work on the host.
    #    The new classes' images (class centers) stay uint8 too and are normalised per batch in
    #    extract_features; when the task trains on its new classes only they are the same tensor.
    train_classes, new_classes = training_classes(job), job.tasks[job.task]
    _, images, labels = arrays.select_classes(train_split, train_classes, label_map)
    x_all = arrays.to_uint8_tensor(images).to(device)
    del images  # the host copy; x_all holds the pixels from here on
    augment_spec = augment.spec_from_dataset(p.dataset)
    y_all = torch.from_numpy(labels).to(device)
    if set(train_classes) == set(new_classes):
        x_new, new_labels = x_all, labels  # (N, C, H, W) uint8, (N,): the same rows in the same order
    else:
        _, new_images, new_labels = arrays.select_classes(train_split, new_classes, label_map)
        x_new = arrays.to_uint8_tensor(new_images)
        del new_images

    # 3. Optimiser, schedule and epochs of this task (method-spec 5.1; 5.6 for a task 0 with its own
    #    recipe, e.g. ImageNet-Subset's SGD base task): a fresh optimiser and scheduler per task.
    #    Official preset: T is recreated as the identity (3.4) and trained beside the network; the key
    #    encoder gets its own BN buffers (4.2). ``trained`` is what the optimiser and a resumable state hold.
    recipe = optim.task_recipe(p.train, job.task)
    trained, step_state = net, None
    if is_official:
        transfer = official_transfer(net.feature_dim, device)
        trained = official.TrainedModules(net, transfer)
        step_state = official.OfficialTask(layout, transfer, official.key_encoder_buffers(net.backbone),
                                           proto_batch=p.train.batch_size,
                                           labels_checked=official.check_task_labels(method, layout, y_all))
    optimizer, scheduler = optim.build_optimizer(trained.parameters(), recipe)

    # 4. Epochs. PR's class centers mu (Eq. 4): stored ones for old classes, the model's for new ones.
    #    A resumed task first takes the saved weights, optimiser, schedule and random streams; a state
    #    saved inside epoch e draws e's data order again from the data generator's state at e's start,
    #    then continues from the saved generator state at step s (ncil.learning.resume).
    steps = -(-len(y_all) // p.train.batch_size)
    progress = EpochProgress(logger, f"task {job.task}", recipe.epochs, steps)
    history = []
    pr_centers = None
    state, start = plan.state, resume.Position(0, 0)
    if state is not None:
        history, start = resume.restore(plan, state, trained, optimizer, scheduler, generator, device,
                                        recipe.epochs, steps)
        pr_centers = state["pr_centers"].to(device) if state["pr_centers"] is not None else None
        logger.info("task %d: resuming from %s after %s", job.task, plan.path,
                    resume.describe_position(start.epoch, start.step, steps))

    def save(position: resume.Position, epoch_generator, counters: dict | None) -> None:
        plan.save(resume.capture(position, trained, optimizer, scheduler, generator, epoch_generator, device,
                                 pr_centers, history, {"steps_per_epoch": steps, **(counters or {})}))

    stop = resume.stopper(plan, save, steps, job.task)

    if plan.stop_requested():  # before the first step: the state on disk (if any) is this very position
        raise resume.Preempted(start.epoch, start.step, steps, job.task, saved=state is not None)
    for epoch in range(start.epoch, recipe.epochs):
        inside = state is not None and epoch == start.epoch and start.step > 0  # resumed inside this epoch
        if not inside and old is not None and method.pr > 0 and (epoch == 0 or method.pr_centers == "epoch"):
            features = extract_features(net, x_new, p.train.eval_batch_size, device, p.dataset.mean, p.dataset.std,
                                        precision)
            pr_centers = torch.cat([old.centers, class_centers(features, torch.from_numpy(new_labels))[1].to(device)])
        net.train()
        progress.start_epoch()
        if inside:
            generator.set_state(state["random"]["data_epoch_start"])
        epoch_generator = generator.get_state()  # before the epoch's data order is drawn
        order = epoch_order(len(y_all), p.train.batch_size, torch_cpu_generator(generator), device)
        first = 0
        if inside:
            generator.set_state(state["random"]["data"])
            progress.seen, progress.loss_sum, progress.correct = (state["counters"][k] for k in EPOCH_COUNTERS)
            first = start.step
        for step in range(first, steps):
            runtime.graph_step_begin(p.runtime.compile)
            idx = order[step]  # (b,) on the device already
            x = augment.augment_batch(x_all.index_select(0, idx), augment_spec, generator,
                                      static=static)  # (B, C, H, W) float32
            if is_official:
                x_strong = augment.strong_view(x_all.index_select(0, idx), augment_spec, p.dataset.image_size,
                                               generator, static=static)  # (B, C, H, W) float32, method-spec 2.2
                with runtime.autocast(device, precision):
                    loss, terms, logits, targets = official.official_step(net, x, x_strong, y_all[idx], method,
                                                                          step_state, old, pr_centers, generator,
                                                                          static=static)
            else:
                with runtime.autocast(device, precision):
                    loss, terms, logits, targets = step_loss(net, x, y_all[idx], method, old, pr_centers, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Rows and right predictions, no host sync. Static shapes: the dropped mixup rows (target
            # official.DROPPED_TARGET) count in neither, so the tally is the compacted step's.
            rows = (targets >= 0).sum() if static and is_official else len(targets)
            progress.step(loss.detach(), rows, (logits.argmax(1) == targets).sum())
            if step + 1 < steps and plan.stop_requested():
                stop(resume.Position(epoch, step + 1), epoch_generator,
                     {k: getattr(progress, k) for k in EPOCH_COUNTERS})
        history.append(progress.end_epoch(epoch, optimizer.param_groups[0]["lr"]))
        if scheduler is not None:
            scheduler.step()
        resume.after_epoch(plan, save, stop, epoch + 1, recipe.epochs, generator)
    progress.close()

    # 5. Class centers and spreads of the new classes (eval mode, no augmentation), after task t-1's rows.
    features = extract_features(net, x_new, p.train.eval_batch_size, device, p.dataset.mean, p.dataset.std,
                                        precision)
    new_labels_t = torch.from_numpy(new_labels)
    class_ids, centers = class_centers(features, new_labels_t)
    rows = empty_centers(net.feature_dim) if previous_centers is None else previous_centers
    if is_official and n_old:  # method-spec 5.4: the old prototypes move into the new space through T
        rows = {**rows, "center": mapped_centers(transfer, rows["center"], device)}
    rows = append_centers(rows, features, new_labels, class_ids, centers, label_map, n_seen, job.task)
    assert n_old == len(rows["class_id"]) - len(class_ids)

    payload = {
        "task": job.task,
        "identity": job.identity,
        "class_order": list(job.class_order),
        "seen_classes": seen,
        "n_outputs": n_outputs,
        "rotations": rot,  # head columns per class: logits[:, :rotations * n_seen:rotations] are the class scores
        "head_layout": "rotation4" if rot == 4 else "plain",
        # Official preset: the mixup columns after the real ones (method-spec 2.5) and the task's trained T (5.4).
        **({"mixup_columns": layout.n_mixup,
            "transfer": {k: v.detach().cpu().clone() for k, v in transfer.state_dict().items()}} if is_official else {}),
        "backbone": method.backbone,
        "config": run_config_snapshot(p, job, device.type),
        "history": history_without_timing(history),
        "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
    }
    return payload, rows


def official_transfer(dim: int, device: torch.device) -> torch.nn.Linear:
    """The transfer layer T of an official task: Linear(d, d) with W = I, b = 0, no random draws (3.4)."""
    from ncil.methods.official import identity_transfer

    return identity_transfer(dim, device=device)


def mapped_centers(transfer: torch.nn.Module, centers: np.ndarray, device: torch.device) -> np.ndarray:
    """Stored old prototypes (K_old, d) mapped through the task's trained T (method-spec 5.4 step 1), float32."""
    from ncil.methods.official import map_prototypes

    mapped = map_prototypes(transfer, torch.from_numpy(np.ascontiguousarray(centers)).to(device))  # (K_old, d)
    return mapped.float().cpu().numpy()


def epoch_order(n: int, batch_size: int, generator: torch.Generator, device: torch.device,
                repeated: bool = False) -> list[torch.Tensor]:
    """The epoch's index batches (``arrays.batches``; ``repeated``: ``arrays.repeated_augmentation_batches``), moved
    to ``device`` in one copy: views of one tensor."""
    order = (arrays.repeated_augmentation_batches(n, batch_size, generator) if repeated
             else list(arrays.batches(n, batch_size, generator)))
    if not order or device.type == "cpu":
        return order
    return list(torch.cat(order).to(device).split([len(b) for b in order]))


def torch_cpu_generator(generator: torch.Generator) -> torch.Generator:
    """The data order is drawn on the CPU (randperm on CUDA takes no CUDA generator everywhere)."""
    if generator.device.type == "cpu":
        return generator
    cpu = torch.Generator()
    cpu.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device)))
    return cpu


def history_without_timing(history: list[dict]) -> list[dict]:
    """Per-epoch loss and accuracy; images/s is left out so checkpoints stay bit-identical."""
    return [{k: v for k, v in h.items() if k != "images_per_s"} for h in history]


def empty_centers(dim: int) -> dict:
    return {
        "class_id": np.zeros(0, np.int32),
        "original_class": np.zeros(0, np.int32),
        "task": np.zeros(0, np.int32),
        "n_samples": np.zeros(0, np.int64),
        "spread": np.zeros(0, np.float32),
        "center": np.zeros((0, dim), np.float32),
    }


def append_centers(rows: dict, features: torch.Tensor, labels: np.ndarray, class_ids: torch.Tensor,
                   centers: torch.Tensor, label_map: dict, n_seen: int, task: int) -> dict:
    """The centers table ``rows`` with task ``task``'s classes appended (pure): each class's center (from
    ``class_centers``), its original label, its sample count and its spread (``gaussian_radius``) over
    ``features`` (N, D) with incremental ``labels`` (N,)."""
    labels_t = torch.from_numpy(labels)
    spreads = [float(gaussian_radius(features[labels_t == c])) for c in class_ids.tolist()]
    counts = np.bincount(labels, minlength=n_seen)
    original = {label: o for o, label in label_map.items()}
    return {
        "class_id": np.concatenate([rows["class_id"], class_ids.numpy()]).astype(np.int32),
        "original_class": np.concatenate([rows["original_class"], [original[int(c)] for c in class_ids]]).astype(np.int32),
        "task": np.concatenate([rows["task"], np.full(len(class_ids), task)]).astype(np.int32),
        "n_samples": np.concatenate([rows["n_samples"], counts[class_ids.numpy()]]).astype(np.int64),
        "spread": np.concatenate([rows["spread"], spreads]).astype(np.float32),
        "center": np.concatenate([rows["center"], centers.numpy()]).astype(np.float32),
    }


@torch.no_grad()
def extract_features(net: IncrementalNet, x: torch.Tensor, batch_size: int, device: torch.device,
                     mean=None, std=None, precision: str = "fp32") -> torch.Tensor:
    """[CLS] features (N, D) in eval mode, on the CPU; leaves the network in eval mode.

    ``x`` is either normalised float32 (N, C, H, W) or uint8 pixels, which are normalised with
    ``mean`` / ``std`` one batch at a time on the device (the same float operations as
    ``arrays.to_tensor``, so the features are bit-identical and no float copy of the set is held).
    """
    net.eval()
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].to(device)
        if batch.dtype == torch.uint8:
            batch = augment.normalize(augment.to_unit(batch), mean, std)  # (b, C, H, W) float32
        with runtime.autocast(device, precision):
            cls, _ = net.backbone(batch)
        out.append(cls.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, net.feature_dim)


