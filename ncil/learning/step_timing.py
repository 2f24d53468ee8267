"""Step timing (for ``bench``): the cost of one training step of a method against its backbone floor.

The floor is what any distillation method on the same rows must pay: the student's forward and
backward pass plus the old model's forward pass (method-spec 5.3: one old-model pass per step).
Everything a method adds on top (rotation, PKS, PR, prototype augmentation, the optimiser step)
shows up as the ratio step / floor.

FeCAM (no step after task 0: its task-0 step), EFC and AdaGauss (their own steps of a task t >= 1) are timed
against the same kind of floor. An `official` method (ncil.methods.official_step) is timed the same way; its rows are the 4B rotated
views plus the mixup images, its floor the student's and the old model's passes over those rows plus the
key encoder's pass over the rotated strong views (the third backbone pass the method needs, 5.3), so the
ratio shows the contrastive, transfer, protoAug, PKS and PR terms and the optimiser step. Under
``runtime.static_shapes`` (resolved as train does) the step is the static one: X' holds all R B mixup
candidates (masked), and the floor runs over those 4B + R B rows too.

Timing on a shared CPU is noisy (other tenants, frequency changes), and the noise only ever adds time.
So the two are timed in alternating rounds (a slow spell hits both alike) and the ratio compares the
fastest round of each, the convention of Python's ``timeit``; the medians are reported beside it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
import statistics
import time

import torch
import torch.nn.functional as F

from ncil.learning.runtime import keep_freed_memory
from ncil.methods import official_step as official
from ncil.methods.baseline import rotate_batch
from ncil.methods.mixup import mixup_batch
from ncil.methods.objective import OldKnowledge, rotations, step_loss
from ncil.models.network import build_network
from ncil.pipeline.config import MethodConfig, Params


def _interleaved_seconds(fns: dict, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each function per round, the functions taking turns within every round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def bench_step(p: Params, method: MethodConfig, batch_size: int, steps: int = 20, warmup: int = 3,
               n_old: int = 4, n_new: int = 2, seed: int = 0) -> dict:
    """Seconds of one full training step and of its floor, on synthetic images (``steps`` rounds): an
    incremental step with ``n_old`` old and ``n_new`` new classes."""
    torch.manual_seed(seed)
    torch.set_num_threads(p.runtime.threads)
    keep_freed_memory()  # as train does (ncil.learning.runtime.setup)
    if official.is_official(method):
        return _bench_official_step(p, method, batch_size, steps, warmup, n_old, n_new, seed)
    if method.backbone == "dytox":
        return bench_dytox_step(p, method, batch_size, [n_old, n_new], steps, warmup, seed)
    if method.classifier == "fecam":
        return _bench_fecam_step(p, method, batch_size, steps, warmup, n_old)
    if method.efc:
        return _bench_efc_step(p, method, batch_size, steps, warmup, n_old, n_new, seed)
    if method.adagauss:
        return _bench_adagauss_step(p, method, batch_size, steps, warmup, n_old, n_new, seed)
    task = _synthetic_task(p, method, rotations(method) * (n_old + n_new), batch_size, n_old, n_new, seed)
    net, x, y = task.net, task.x, task.y
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    full_step = _train_step(lambda: step_loss(net, x, y, method, task.old, task.pr_centers, task.generator)[0],
                            optimizer)
    xr, yr = rotate_batch(x, y) if method.rotation else (x, y)  # the same rows the step trains on
    floor = _backbone_floor(net, task.old.teacher, xr, yr)
    return _timed(full_step, floor, steps, warmup, int(xr.shape[0]), batch_size, p.runtime.threads, net,
                  "student fwd+bwd + old-model fwd")


@dataclass
class _SyntheticTask:
    """An incremental task on random images: the network (train mode), its frozen copy as the old model with
    random stored centres, the PR centres of every class, one batch (x, its strong view or None, y) and the
    step's generator."""

    net: torch.nn.Module
    old: OldKnowledge
    pr_centers: torch.Tensor  # (n_old + n_new, d)
    x: torch.Tensor
    x_strong: torch.Tensor | None
    y: torch.Tensor
    generator: torch.Generator


def _synthetic_task(p: Params, method: MethodConfig, n_outputs: int, batch_size: int, n_old: int, n_new: int,
                    seed: int, strong_view: bool = False) -> _SyntheticTask:
    net = build_network(p.model, p.dataset.channels, n_outputs, method.backbone)
    teacher = copy.deepcopy(net).eval().requires_grad_(False)
    dim = net.feature_dim
    old = OldKnowledge(teacher=teacher, centers=torch.randn(n_old, dim), radius=0.5)
    pr_centers = torch.cat([old.centers, torch.randn(n_new, dim)])
    shape = (batch_size, p.dataset.channels, p.dataset.image_size, p.dataset.image_size)
    x = torch.randn(shape)
    x_strong = torch.randn(shape) if strong_view else None
    y = torch.randint(n_old, n_old + n_new, (batch_size,))
    net.train()
    return _SyntheticTask(net, old, pr_centers, x, x_strong, y, torch.Generator().manual_seed(seed))


def _train_step(loss_of, optimizer):
    """One optimiser step on the loss ``loss_of()`` returns, as train takes it."""
    def step():
        loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _backbone_floor(net, teacher, rows: torch.Tensor, labels: torch.Tensor, extra=None):
    """The floor: the student's forward and backward over ``rows`` and the old model's forward over them,
    then ``extra()`` (another pass the method needs), if given."""
    def floor():
        logits = net(rows)["logits"]
        net.zero_grad(set_to_none=True)
        F.cross_entropy(logits, labels).backward()
        with torch.no_grad():
            teacher.backbone(rows)
        if extra is not None:
            extra()
    return floor


def _bench_fecam_step(p: Params, method: MethodConfig, batch_size: int, steps: int, warmup: int,
                      n_classes: int) -> dict:
    """FeCAM trains no step after task 0 (frozen backbone): its one training step is task 0's plain cross-entropy
    over ``n_classes`` classes, timed against the floor of the same forward and backward with no old model (the
    ratio shows the optimiser step)."""
    net = build_network(p.model, p.dataset.channels, n_classes, method.backbone).train()
    x = torch.randn(batch_size, p.dataset.channels, p.dataset.image_size, p.dataset.image_size)
    y = torch.randint(0, n_classes, (batch_size,))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    full_step = _train_step(lambda: F.cross_entropy(net(x)["logits"], y), optimizer)

    def floor():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x)["logits"], y).backward()

    return {**_timed(full_step, floor, steps, warmup, batch_size, batch_size, p.runtime.threads, net,
                     "student fwd+bwd, no old model"), "task": "task 0: FeCAM trains nothing after it"}


def _bench_efc_step(p: Params, method: MethodConfig, batch_size: int, steps: int, warmup: int, n_old: int,
                    n_new: int, seed: int) -> dict:
    """EFC's step of a task t >= 1 (``ncil.learning.efc_training``): the backbone and the new head (EFC++; with
    PR-ACE also the old head's replay) on CE(new head) + L_EFM against the frozen old model's features, with a
    random positive semi-definite E; floor: the student's forward and backward with the new head's CE and the old
    model's forward."""
    from ncil.learning import efc_training
    from ncil.methods import efc

    net = build_network(p.model, p.dataset.channels, n_old, method.backbone)
    teacher = copy.deepcopy(net).eval().requires_grad_(False)
    model = efc_training.EfcModel(net, n_old, n_new).train()
    efc_training.freeze_batch_norm(model.backbone)
    a = torch.randn(net.feature_dim, net.feature_dim) / net.feature_dim
    efm = a @ a.T  # (D, D) positive semi-definite
    x = torch.randn(batch_size, p.dataset.channels, p.dataset.image_size, p.dataset.image_size)
    y = torch.randint(0, n_new, (batch_size,))
    optimizer = torch.optim.Adam([*model.backbone.parameters(), *model.new_head.parameters()], lr=1e-4)

    def loss():
        features, _ = model.backbone(x)
        with torch.no_grad():
            old_features, _ = teacher.backbone(x)
        return F.cross_entropy(model.new_head(features), y) + efc.efm_penalty(features, old_features, efm,
                                                                               method.efc_lambda, method.efc_damping)

    full_step = _train_step(loss, optimizer)

    def floor():
        features, _ = model.backbone(x)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model.new_head(features), y).backward()
        with torch.no_grad():
            teacher.backbone(x)

    return _timed(full_step, floor, steps, warmup, batch_size, batch_size, p.runtime.threads, model,
                  "student fwd+bwd + old-model fwd")


def _bench_adagauss_step(p: Params, method: MethodConfig, batch_size: int, steps: int, warmup: int, n_old: int,
                         n_new: int, seed: int) -> dict:
    """AdaGauss's step of a task t >= 1 (``ncil.learning.adagauss_training``): backbone + bottleneck, the task head
    and the distiller on CE + projected distillation + anti-collapse, gradients clipped to norm 1; floor: the
    student's forward and backward with the task head's CE and the old model's forward (no distiller, no
    Cholesky). The adapter's training after the task is not in the step."""
    from ncil.learning import adagauss_training
    from ncil.methods import adagauss

    latent = method.adagauss_latent
    if batch_size <= latent:
        raise ValueError(f"adagauss: the batch ({batch_size}) must exceed the latent width ({latent})")
    net = build_network(p.model, p.dataset.channels, latent, method.backbone)
    teacher = copy.deepcopy(net).eval().requires_grad_(False)
    model = adagauss_training.AdaGaussModel(net, n_new, latent, distiller=True).train()
    x = torch.randn(batch_size, p.dataset.channels, p.dataset.image_size, p.dataset.image_size)
    y = torch.randint(0, n_new, (batch_size,))
    trained = list(model.parameters())
    optimizer = torch.optim.Adam(trained, lr=1e-4)

    def full_step():
        features = model.latent(x)
        with torch.no_grad():
            old = teacher(x)["logits"]
        loss = adagauss.training_loss(F.cross_entropy(model.task_head(features), y), features, old, model.distiller,
                                      lamb=method.adagauss_lambda, alpha=method.adagauss_alpha,
                                      beta=method.adagauss_beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, adagauss_training.CLIP_NORM)
        optimizer.step()

    def floor():
        features = model.latent(x)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model.task_head(features), y).backward()
        with torch.no_grad():
            teacher(x)

    return _timed(full_step, floor, steps, warmup, batch_size, batch_size, p.runtime.threads, model.net,
                  "student fwd+bwd + old-model fwd")


def _bench_official_step(p: Params, method: MethodConfig, batch_size: int, steps: int, warmup: int,
                         n_old: int, n_new: int, seed: int) -> dict:
    """``bench_step`` for an official method: ``official_step`` as train calls it (network and T in one
    Adam, the key encoder's own BN buffers, a strong view per image), against its floor: the backbone
    passes the method requires (method-spec 5.3), i.e. the student's forward and backward and the old
    model's forward over X' (the 4B rotated views and the mixup images of one draw), and, with the
    contrastive loss on, the key encoder's forward over the 4B rotated strong views."""
    from ncil.learning.training import official_transfer
    from ncil.pipeline.config import resolve_static_shapes

    static = resolve_static_shapes(p.runtime.static_shapes, p.runtime.compile)
    layout = official.head_layout(method, n_old, n_new)
    task = _synthetic_task(p, method, layout.n_outputs, batch_size, n_old, n_new, seed, strong_view=True)
    net, x, y = task.net, task.x, task.y
    transfer = official_transfer(net.feature_dim, torch.device("cpu"))
    step_state = official.OfficialTask(layout, transfer, official.key_encoder_buffers(net.backbone),
                                       proto_batch=batch_size)
    optimizer = torch.optim.Adam(official.TrainedModules(net, transfer).parameters(), lr=1e-4)
    full_step = _train_step(lambda: official.official_step(net, x, task.x_strong, y, method, step_state, task.old,
                                                           task.pr_centers, task.generator, static=static)[0],
                            optimizer)

    xs, ys = rotate_batch(x, y)  # X': the rotated rows, then (with mixup) one draw of the mixup images
    if method.mixup_rounds > 0:
        x_mix, y_mix = mixup_batch(x, y, layout, torch.Generator().manual_seed(seed), rounds=method.mixup_rounds,
                                   static=static)[:2]  # static: all R B candidates (dropped ones: a valid label)
        xs, ys = torch.cat([xs, x_mix]), torch.cat([ys, y_mix])
    extra = None
    if method.contrastive > 0:  # the key encoder over X_aug (4B rows), with its own copy of the BN buffers
        strong4, _ = rotate_batch(task.x_strong, y)
        floor_buffers = official.key_encoder_buffers(net.backbone)
        extra = lambda: official.key_features(net.backbone, strong4, floor_buffers)  # noqa: E731
    floor = _backbone_floor(net, task.old.teacher, xs, ys, extra)
    passes = "student fwd+bwd + old-model fwd" + (" + key-encoder fwd" if extra else "")
    result = _timed(full_step, floor, steps, warmup, int(xs.shape[0]), batch_size, p.runtime.threads, net, passes)
    return {**result, "static_shapes": static}


def bench_dytox_step(p: Params, method: MethodConfig, batch_size: int, classes_per_task: list[int], steps: int = 20,
                     warmup: int = 3, seed: int = 0) -> dict:
    """``bench_step`` for a DyTox method (docs/dytox.md) in task t = ``len(classes_per_task)``: the network after t - 1
    expansions (t task tokens, t classifiers, the divergence head), the teacher with t - 1 tokens, the task phase's
    trainable parameters and optimiser (``dytox_optimizer``), and the step as ``train_dytox_task`` takes it: both
    forwards, every term of ``loss_terms`` (clf, kd and/or pks, div), backward, the optimiser step. The floor is the
    same two forwards (the student's t TAB passes, the teacher's t - 1: DyTox cannot classify without them) with a
    cross-entropy on the logits and its backward, so the ratio shows the distillation, divergence and optimiser."""
    from ncil.learning.dytox_training import loss_config
    from ncil.learning.optim import build_optimizer, decay_groups, dytox_recipe
    from ncil.methods.dytox import loss_terms, total_loss
    from ncil.models.dytox import DyToxNet, apply_phase, weight_decayed

    if len(classes_per_task) < 2:
        raise ValueError(f"tasks: a DyTox step with a teacher needs at least 2 tasks, got {len(classes_per_task)}")
    generator = torch.Generator().manual_seed(seed)
    net = DyToxNet(p.model, p.dataset.channels, classes_per_task[0], divergence=method.divergence > 0)
    for n_classes in classes_per_task[1:-1]:
        net.expand(n_classes, generator=generator)
    teacher = copy.deepcopy(net).eval().requires_grad_(False)
    teacher.divergence = None  # as train_dytox_task: the teacher's logits, patches and embeddings only
    net.expand(classes_per_task[-1], generator=generator)
    task = len(classes_per_task) - 1
    apply_phase(net, "task")
    recipe = dytox_recipe(p.train, method, task)
    trainable = [(name, q) for name, q in net.named_parameters() if q.requires_grad]
    groups = (decay_groups(trainable, weight_decayed, recipe.weight_decay) if recipe.optimizer == "adamw"
              else [q for _, q in trainable])
    optimizer = build_optimizer(groups, recipe)[0]
    n_old = sum(classes_per_task[:-1])
    x = torch.randn(batch_size, p.dataset.channels, p.dataset.image_size, p.dataset.image_size, generator=generator)
    y = torch.randint(n_old, n_old + classes_per_task[-1], (batch_size,), generator=generator)
    cfg = loss_config(method)
    net.train()

    def loss_of():
        out = net(x)
        with torch.no_grad():
            old = teacher(x)
        return total_loss(loss_terms(out, y, cfg, old))

    def floor():
        logits = net(x)["logits"]
        net.zero_grad(set_to_none=True)
        F.cross_entropy(logits, y).backward()
        with torch.no_grad():
            teacher(x)

    result = _timed(_train_step(loss_of, optimizer), floor, steps, warmup, batch_size, batch_size, p.runtime.threads,
                    net, f"student fwd+bwd ({task + 1} task tokens) + old-model fwd ({task})")
    result["parameters"] = sum(q.numel() for q in net.parameters())  # DyTox has no .backbone: the whole network
    return {**result, "tasks": task + 1}


def _timed(full_step, floor, steps: int, warmup: int, rows: int, batch_size: int, threads: int, net,
           floor_passes: str) -> dict:
    """Time ``full_step`` and ``floor`` in alternating rounds; the fastest and the median round of each."""
    times = _interleaved_seconds({"step": full_step, "floor": floor}, steps, warmup)
    step_s, floor_s = min(times["step"]), min(times["floor"])
    step_median, floor_median = statistics.median(times["step"]), statistics.median(times["floor"])
    return {
        "rows": rows,
        "step_ms": 1e3 * step_s,
        "floor_ms": 1e3 * floor_s,
        "ratio": step_s / floor_s,
        "step_median_ms": 1e3 * step_median,
        "floor_median_ms": 1e3 * floor_median,
        "median_ratio": step_median / floor_median,
        "images_per_s": batch_size / step_s,
        "threads": threads,
        "floor_passes": floor_passes,
        "parameters": sum(q.numel() for q in net.backbone.parameters()) if hasattr(net, "backbone") else 0,
    }


# CIFAR-100's training view (method-spec 2.1): RandomCrop(32, padding=4) -> RandomHorizontalFlip ->
# ColorJitter(brightness=63/255) -> ToTensor -> Normalize.
CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def cifar_view(brightness: float = 63 / 255, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0):
    """The CIFAR-100 training view as an ``AugmentSpec`` (batched) and as a torchvision v1 Compose (per image)."""
    from torchvision import transforms as T

    from ncil.data.augment import AugmentSpec

    spec = AugmentSpec(mean=CIFAR_MEAN, std=CIFAR_STD, crop_padding=4, crop_fill="black", hflip=True,
                       brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
    per_image = T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue),
        T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    return spec, per_image


def bench_augment(batch_size: int = 64, batched_images: int = 4096, pil_images: int = 512, rounds: int = 5,
                  threads: int = 1, seed: int = 0, jitter: tuple[float, float, float, float] = (63 / 255, 0, 0, 0)) -> dict:
    """Images/s of the batched augmentation (``ncil.data.augment``) against torchvision + PIL per image.

    Both produce the normalised training view of synthetic 32x32x3 uint8 images, starting from the
    images held in memory: the batched path gathers a batch of a uint8 (N, 3, 32, 32) tensor and
    augments it in one call per batch (as ``train`` does on its device); the per-image path does what a
    PyTorch ``Dataset.__getitem__`` of CIFAR does for every image (``Image.fromarray`` -> Compose) and
    then collates the batch with ``torch.stack``, in one process (one loader worker). The two take turns
    within every round and the ratio compares the fastest round of each (see the module docstring).
    """
    from PIL import Image

    from ncil.data.augment import augment_batch

    torch.set_num_threads(threads)
    rng = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batched_images, 32, 32, 3), generator=rng, dtype=torch.uint8)  # (N, H, W, C)
    x_all = pixels.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W), as train keeps it
    arrays_hwc = pixels[:pil_images].numpy()
    spec, per_image = cifar_view(*jitter)
    order = torch.randperm(batched_images, generator=rng)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # torchvision's transforms draw from the global generator

    def batched():
        for start in range(0, batched_images, batch_size):
            augment_batch(x_all.index_select(0, order[start : start + batch_size]), spec, generator)

    def pil():
        for start in range(0, pil_images, batch_size):
            torch.stack([per_image(Image.fromarray(a)) for a in arrays_hwc[start : start + batch_size]])

    times = _interleaved_seconds({"batched": batched, "pil": pil}, rounds, warmup=1)
    batched_rate = batched_images / min(times["batched"])
    pil_rate = pil_images / min(times["pil"])
    return {
        "batched_images_per_s": batched_rate,
        "pil_images_per_s": pil_rate,
        "ratio": batched_rate / pil_rate,
        "batched_median_images_per_s": batched_images / statistics.median(times["batched"]),
        "pil_median_images_per_s": pil_images / statistics.median(times["pil"]),
        "batch_size": batch_size,
        "threads": threads,
        "rounds": rounds,
    }
