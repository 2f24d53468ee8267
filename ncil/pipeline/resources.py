"""What each workflow job asks a scheduler for: CPUs, memory, a run-time limit and GPUs (no I/O).

The rules (rules/*.smk) take their ``threads`` and ``resources`` from here, so a SLURM job
(profiles/slurm) is sent with ``--cpus-per-task``, ``--mem``, ``-t`` and ``--gpus`` that fit the job,
not the whole node. The numbers follow the parsed params (``ncil.pipeline.config.Params``) of the job's grid:

* memory: a process base (Python, torch; more with CUDA) plus what the step holds of the data set's
  uint8 arrays (memory-mapped: a training task holds its own rows, evaluation the seen classes' test
  images and their float32 copy, prepare the raw images it decodes), with 25% headroom;
* run time: a startup allowance plus the step's floating-point work (epochs x the task's training
  images x forward-equivalents per image x a forward's FLOP, ``forward_flop``) at a conservative
  throughput per device (``THROUGHPUT``), doubled for safety, and multiplied by the attempt number,
  so a job retried after hitting its limit gets more time.

These are estimates for a scheduler, never inputs of a result: no command or output depends on them.
Override any of them without editing code, per rule, on the command line or in a profile:
``snakemake --set-resources train:runtime=720 train:mem_mb=16000`` (profiles/slurm/config.yaml shows
the same as ``set-resources`` keys), or ``--set-threads train=8``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ncil.data.catalog import class_split_counts
from ncil.pipeline.config import MethodConfig, Params

# Images per class before val (and, without a test set of its own, test) are carved out, and test
# images per class of the data set's own test set. digits: 1,797 / 10; folder: unknown before
# prepare, so an assumption (override the resources of a large folder data set).
IMAGES_PER_CLASS = {"digits": 180, "cifar100": 500, "tinyimagenet": 500, "imagenet_subset": 1300, "folder": 1000}
TEST_PER_CLASS = {"cifar100": 100, "tinyimagenet": 50, "imagenet_subset": 50, "folder": 100}
# Seconds to read one raw image at prepare: arrays (digits, CIFAR pickles) vs decoding image files.
DECODE_SECONDS = {"digits": 1e-5, "cifar100": 1e-4, "tinyimagenet": 2e-3, "imagenet_subset": 1e-2, "folder": 1e-2}

# Sustained FLOP/s assumed per job: per CPU thread (fp32), and per GPU (bf16 autocast). Both are below
# what was seen (digits on this machine's CPU: ~5e9 per thread; an H100 at 15% utilisation: 1.2e14),
# so a limit errs long.
THROUGHPUT = {"cpu": 2e9, "gpu": 6e13}
BASE_MB = {"cpu": 1200, "gpu": 4000}  # resident size of a training process before data (CUDA's host side)
STARTUP_S = {"cpu": 60, "gpu": 180}  # imports, data load, device initialisation
COMPILE_S = 900  # runtime.compile: torch.compile of the backbone, once per job
SAFETY = 2.0  # run-time limit = SAFETY x estimate
MEM_HEADROOM = 1.25
MIN_RUNTIME = 10  # minutes: no limit below this (queueing and startup are not worth a tighter one)
MEM_STEP = 256  # MB: memory is rounded up to this
RESNET18_FLOP_32 = 0.56e9  # forward FLOP of the CIFAR-stem ResNet-18 at 32x32 (scales with pixels)

SMALL_RULES = ("split", "summarize", "results_table", "paper_sections", "paper_tables", "figures", "costs")
SMALL_MB = 800  # a small step: Python, NumPy, pyarrow, matplotlib


@dataclass(frozen=True)
class Request:
    """One job's request: what SLURM's --cpus-per-task, --mem (MB), -t (minutes) and --gpus get."""

    cpus: int
    mem_mb: int
    runtime: int
    gpus: int


def device_kind(p: Params) -> str:
    """``gpu`` unless ``runtime.device`` is cpu (auto counts as gpu only when GPUs are asked for)."""
    if p.runtime.device == "cpu" or (p.runtime.device == "auto" and p.runtime.gpus_per_job == 0):
        return "cpu"
    return "gpu"


def gpus(p: Params) -> int:
    """GPUs of a training or evaluation job: ``runtime.gpus_per_job``, 0 when the device is the CPU."""
    return 0 if p.runtime.device == "cpu" else p.runtime.gpus_per_job


def images_per_class(p: Params) -> tuple[int, int]:
    """(training, test) images of one class, after the val split and any smoke cut (max_*_per_class)."""
    d = p.dataset
    pool = IMAGES_PER_CLASS.get(d.name, IMAGES_PER_CLASS["folder"])
    if d.max_train_per_class:
        pool = min(pool, d.max_train_per_class)
    if d.name in TEST_PER_CLASS:
        train, _, _ = class_split_counts(pool, 0.0, d.val_fraction)
        test = TEST_PER_CLASS[d.name]
        if d.max_test_per_class:
            test = min(test, d.max_test_per_class)
    else:
        train, _, test = class_split_counts(pool, d.test_fraction, d.val_fraction)
    return train, test


def n_classes(p: Params) -> int:
    return min(p.dataset.n_classes, p.dataset.max_classes) if p.dataset.max_classes else p.dataset.n_classes


def image_bytes(p: Params) -> int:
    return p.dataset.image_size * p.dataset.image_size * p.dataset.channels


def dataset_mb(p: Params) -> float:
    """MB of the prepared uint8 image arrays of every split (train, val, test)."""
    pool = IMAGES_PER_CLASS.get(p.dataset.name, IMAGES_PER_CLASS["folder"])
    if p.dataset.max_train_per_class:
        pool = min(pool, p.dataset.max_train_per_class)
    test = TEST_PER_CLASS.get(p.dataset.name, 0)
    return n_classes(p) * (pool + test) * image_bytes(p) / 1e6


def forward_flop(p: Params, method: MethodConfig | None = None) -> float:
    """FLOP of one image's forward pass (a multiply-add counts 2): the ViT's depth blocks plus its
    class-attention block, each 12 d^2 per token (attention and a 4x MLP) and 4 n^2 d of attention;
    ResNet-18 (``backbone: resnet18``) from its 32x32 cost, scaled by the pixels its blocks see (the 7x7 stem
    and max-pool of 224-pixel images divide them by 16); the hybrid (``backbone: hybrid``) as a ResNet-18 of
    ``model.resnet_width`` (convolutions scale with the width squared) plus the GPSA encoder on the patch
    tokens (no class-attention block: it is not built)."""
    from ncil.models.resnet import uses_imagenet_stem

    m = p.model
    side = m.img_size / 4 if uses_imagenet_stem(m.img_size) else m.img_size  # the side layer1 sees
    if method is not None and method.backbone == "resnet18":
        return RESNET18_FLOP_32 * (side / 32) ** 2
    if method is not None and method.backbone == "hybrid":
        resnet = RESNET18_FLOP_32 * (side / 32) ** 2 * (m.resnet_width / 64) ** 2
        return resnet + m.depth * _block_flop(m, (m.img_size // m.patch_size) ** 2)
    return (m.depth + 1) * _block_flop(m, (m.img_size // m.patch_size) ** 2 + 1)


def _block_flop(m, tokens: int) -> float:
    """One transformer block over ``tokens`` tokens: 12 d^2 per token (qkv, proj, 4x MLP) and 4 n^2 d of attention."""
    return 2 * (4 + 2 * m.mlp_ratio) * m.embed_dim**2 * tokens + 4 * tokens**2 * m.embed_dim


def task_classes(p: Params, initial: int, increment: int, task: int, method: MethodConfig) -> int:
    """Classes a task trains on: F for task 0, C after, all seen so far for ``train_on: seen``."""
    if task == 0:
        return initial
    return initial + task * increment if method.train_on == "seen" else increment


def _minutes(seconds: float, attempt: int) -> int:
    return max(MIN_RUNTIME, math.ceil(SAFETY * seconds / 60)) * max(1, attempt)


def _mem(mb: float) -> int:
    return int(math.ceil(mb * MEM_HEADROOM / MEM_STEP) * MEM_STEP)


def train(p: Params, method: MethodConfig, initial: int, increment: int, task: int, attempt: int = 1) -> Request:
    """One training task: ``epochs`` (task 0: ``base_epochs`` when set) over the task's images, each
    row a forward and a backward (3 forward-equivalents), 4 rows an image with rotation, plus the old
    model's forward for t >= 1. The official preset adds up to one mixup row per image and round
    (method-spec 2.4: rows whose pair has two classes) and, with the contrastive loss, the key
    encoder's forward over the rotated strong views (4.2)."""
    kind = device_kind(p)
    train_pc, _ = images_per_class(p)
    images = task_classes(p, initial, increment, task, method) * train_pc
    views = 4 if method.rotation else 1
    rows = views + method.mixup_rounds
    per_image = 3 * rows + (rows if task > 0 else 0) + (views if method.contrastive > 0 else 0)
    epochs = p.train.base_epochs if task == 0 and p.train.base_epochs else p.train.epochs
    flop = epochs * images * per_image * forward_flop(p, method)
    if method.backbone == "dytox":  # docs/dytox.md: the memory's rows too, one TAB pass per task, the fine-tuning
        old = initial + (task - 1) * increment if task > 0 else 0
        memory = method.exemplars_per_class * old
        per_tab = _block_flop(p.model, (p.model.img_size // p.model.patch_size) ** 2 + 1)
        per_row = forward_flop(p, method) + task * per_tab  # task + 1 TAB passes
        flop = epochs * (images + memory) * per_image * per_row
        if task > 0:
            flop += method.finetune_epochs * method.exemplars_per_class * (old + increment) * 3 * per_row
    rate = THROUGHPUT[kind] * (p.runtime.threads if kind == "cpu" else max(1, gpus(p)))
    seconds = STARTUP_S[kind] + (COMPILE_S if p.runtime.compile else 0) + flop / rate
    mem = BASE_MB[kind] + 3 * images * image_bytes(p) / 1e6  # the task's rows of the mapped arrays, 2 copies
    return Request(p.runtime.threads, _mem(mem), _minutes(seconds, attempt), gpus(p))


def evaluate(p: Params, method: MethodConfig, initial: int, increment: int, n_tasks: int, attempt: int = 1) -> Request:
    """Every task's checkpoint on the test images of the classes seen after it."""
    kind = device_kind(p)
    _, test_pc = images_per_class(p)
    images = sum((initial + t * increment) * test_pc for t in range(n_tasks))
    rate = THROUGHPUT[kind] * (p.runtime.threads if kind == "cpu" else max(1, gpus(p)))
    seconds = STARTUP_S[kind] + images * forward_flop(p, method) / rate
    seen_test = (initial + (n_tasks - 1) * increment) * test_pc
    mem = BASE_MB[kind] + (2 + 4) * seen_test * image_bytes(p) / 1e6  # uint8 rows, a copy, float32
    return Request(p.runtime.threads, _mem(mem), _minutes(seconds, attempt), gpus(p))


def prepare(p: Params, attempt: int = 1) -> Request:
    """Reading the raw data set once and writing its arrays (raw, resized and split copies in memory)."""
    images = n_classes(p) * (IMAGES_PER_CLASS.get(p.dataset.name, 1000) + TEST_PER_CLASS.get(p.dataset.name, 0))
    seconds = STARTUP_S["cpu"] + images * DECODE_SECONDS.get(p.dataset.name, DECODE_SECONDS["folder"])
    return Request(1, _mem(800 + 1.5 * dataset_mb(p)), _minutes(seconds, attempt), 0)  # arrays written through memmaps


def small(rule: str, attempt: int = 1) -> Request:
    """Splits, summaries, tables and figures (``figures_<dataset>`` too): seconds of work on small files."""
    if rule not in SMALL_RULES and not rule.startswith("figures_"):
        raise ValueError(f"rule {rule!r}: not a small step (expected one of {', '.join(SMALL_RULES)}, figures_<dataset>)")
    return Request(1, _mem(SMALL_MB), MIN_RUNTIME * max(1, attempt), 0)


def figure4(p: Params, attempt: int = 1) -> Request:
    """Figure 4: loads the data set's arrays and a few checkpoints, forwards a handful of images (CPU)."""
    return Request(1, _mem(BASE_MB["cpu"] + dataset_mb(p)), MIN_RUNTIME * max(1, attempt), 0)
