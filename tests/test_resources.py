"""ncil/pipeline/resources.py: what each job asks a scheduler for, with numbers worked out by hand."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import yaml

from conftest import ROOT, run
from ncil.pipeline import resources as res
from ncil.pipeline.config import parse_params


def load(path: str, **runtime):
    p = parse_params(yaml.safe_load((ROOT / path).read_text()), path)
    return dataclasses.replace(p, runtime=dataclasses.replace(p.runtime, **runtime)) if runtime else p


@pytest.fixture(scope="module")
def digits():
    return load("params.yaml")


@pytest.fixture(scope="module")
def cifar_gpu():
    return load("grids/cifar100/params.yaml", device="cuda", gpus_per_job=1, threads=4)


def test_images_and_bytes(digits, cifar_gpu):
    # digits: 180 a class, round(36.0) = 36 to test, round(144 * 0.1) = 14 to val, 130 to train
    assert res.images_per_class(digits) == (130, 36)
    assert res.dataset_mb(digits) == pytest.approx(10 * 180 * 8 * 8 * 1 / 1e6)
    # CIFAR-100: 500 a class, all to train (the reported grid carves no val: dataset.val_fraction 0), its
    # own 100 test images; 100 x 600 x 32 x 32 x 3 bytes
    assert res.images_per_class(cifar_gpu) == (500, 100)
    assert res.dataset_mb(cifar_gpu) == pytest.approx(184.32)


def test_smoke_cuts_shrink_the_data(cifar_gpu):
    d = dataclasses.replace(cifar_gpu.dataset, max_classes=10, max_train_per_class=20, max_test_per_class=5)
    p = dataclasses.replace(cifar_gpu, dataset=d)
    assert res.images_per_class(p) == (20, 5)  # val_fraction 0: all 20 train
    assert res.n_classes(p) == 10
    assert res.dataset_mb(p) == pytest.approx(10 * (20 + 100) * 3072 / 1e6)


def test_forward_flop(digits, cifar_gpu):
    # 17 tokens of dim 64, 6 blocks: 2 x 12 x 64^2 x 17 + 4 x 17^2 x 64 = 1,745,152 a block
    assert res.forward_flop(digits) == 6 * 1_745_152
    # the paper's ViT at 32x32 / patch 4: 65 tokens of dim 384 (docs/gpu.md: 1.209 GFLOP by torch's counter)
    assert res.forward_flop(cifar_gpu) == 6 * (2 * 12 * 384**2 * 65 + 4 * 65**2 * 384) == 1_419_125_760
    assert res.forward_flop(cifar_gpu, cifar_gpu.method["pass_resnet18"]) == res.RESNET18_FLOP_32


def test_forward_flop_of_the_hybrid_backbone(digits, cifar_gpu):
    hybrid = dataclasses.replace(cifar_gpu.method["ours"], backbone="hybrid")
    # CIFAR, width 64: ResNet-18 0.56 GFLOP + 5 GPSA blocks over 64 tokens (no CLS, no class-attention
    # block): 5 x (2 x 12 x 384^2 x 64 + 4 x 64^2 x 384) = 5 x 232,783,872
    assert res.forward_flop(cifar_gpu, hybrid) == pytest.approx(0.56e9 + 5 * 232_783_872)
    # digits, width 16: 0.56e9 x (8/32)^2 x (16/64)^2 = 2,187,500, + 5 x (2 x 12 x 64^2 x 16 + 4 x 16^2 x 64)
    narrow = dataclasses.replace(digits, model=dataclasses.replace(digits.model, resnet_width=16))
    assert res.forward_flop(narrow, hybrid) == pytest.approx(2_187_500 + 5 * 1_638_400)


def test_official_rows_add_mixup_and_key_encoder(cifar_gpu, monkeypatch):
    monkeypatch.setattr(res, "forward_flop", lambda p, method=None: 1e9)  # 1 GFLOP an image
    ours = cifar_gpu.method["ours"]
    official = dataclasses.replace(ours, mixup_rounds=4, contrastive=0.1)
    # task 1, 10 classes' training images, 400 epochs at 6e13 FLOP/s: ours 16 forward-equivalents an
    # image (12 + the teacher's 4); official 3 x 8 rows + the teacher's 8 + the key encoder's 4 = 36
    images = 10 * res.images_per_class(cifar_gpu)[0]
    seconds = lambda fe: 400 * images * fe * 1e9 / 6e13  # noqa: E731
    assert res.train(cifar_gpu, ours, 50, 10, 1).runtime == math.ceil(2 * (180 + seconds(16)) / 60)
    assert res.train(cifar_gpu, official, 50, 10, 1).runtime == math.ceil(2 * (180 + seconds(36)) / 60)


def test_train_request_scales_with_schedule_and_data(cifar_gpu):
    ours = cifar_gpu.method["ours"]  # rotation: 4 rows an image
    # task 0: 400 epochs x 25,000 images x 12 forward-equivalents x 1.419 GFLOP / 6e13 = 2838.3 s, + 180 s
    # startup, x 2 = 100.6 min -> 101; memory (4000 + 3 x 25,000 x 3072 / 1e6) x 1.25 = 5288 -> 5376 MB
    assert res.train(cifar_gpu, ours, 50, 10, 0) == res.Request(cpus=4, mem_mb=5376, runtime=101, gpus=1)
    # task 1: 5,000 images x 16 (the old model's forward too): 756.9 s + 180 s -> 31.2 min -> 32;
    # memory (4000 + 3 x 5,000 x 3072 / 1e6) x 1.25 = 5057.6 -> 5120 MB
    assert res.train(cifar_gpu, ours, 50, 10, 1) == res.Request(cpus=4, mem_mb=5120, runtime=32, gpus=1)
    # a retried job (attempt 2) gets twice the limit
    assert res.train(cifar_gpu, ours, 50, 10, 1, attempt=2).runtime == 64
    # half the epochs: 378.4 s + 180 s -> 18.6 min -> 19
    half = dataclasses.replace(cifar_gpu, train=dataclasses.replace(cifar_gpu.train, epochs=200))
    assert res.train(half, ours, 50, 10, 1).runtime == 19


def test_joint_trains_on_every_seen_class(digits):
    finetune, joint = digits.method["finetune"], digits.method["joint"]
    assert res.task_classes(digits, 4, 2, 3, finetune) == 2
    assert res.task_classes(digits, 4, 2, 3, joint) == 10
    # joint, task 3: 20 epochs x 1,300 images x 4 x 10.47 MFLOP / 2e9 = 544.5 s + 60 s -> 20.2 min -> 21
    assert res.train(digits, joint, 4, 2, 3).runtime == 21
    assert res.train(digits, finetune, 4, 2, 3).runtime == res.MIN_RUNTIME


def test_cpu_device_asks_for_no_gpu_and_uses_threads(cifar_gpu):
    cpu = dataclasses.replace(cifar_gpu, runtime=dataclasses.replace(cifar_gpu.runtime, device="cpu", threads=8))
    req = res.train(cpu, cpu.method["ours"], 50, 10, 0)
    assert (req.cpus, req.gpus) == (8, 0)
    # 1.7030e17 FLOP / (8 x 2e9) = 10,643,443 s + 60 s -> x 2 / 60 = 354,783.4 -> 354,784 min; CPU base 1200 MB
    assert req.runtime == 354_784
    assert req.mem_mb == 1792
    auto = dataclasses.replace(cifar_gpu, runtime=dataclasses.replace(cifar_gpu.runtime, device="auto", gpus_per_job=0))
    assert res.gpus(auto) == 0 and res.device_kind(auto) == "cpu"


def test_evaluate_prepare_and_small_steps(digits, cifar_gpu):
    ours = cifar_gpu.method["ours"]
    # 6 tasks: (50 + 60 + ... + 100) x 100 test images = 45,000 forwards: 1.06 s + 180 s -> the minimum;
    # memory (4000 + 6 x 10,000 x 3072 / 1e6) x 1.25 = 5230 -> 5376 MB
    assert res.evaluate(cifar_gpu, ours, 50, 10, 6) == res.Request(cpus=4, mem_mb=5376, runtime=10, gpus=1)
    assert res.prepare(cifar_gpu) == res.Request(cpus=1, mem_mb=1536, runtime=10, gpus=0)
    assert res.small("summarize") == res.Request(cpus=1, mem_mb=1024, runtime=10, gpus=0)
    assert res.small("figures_cifar100", attempt=3).runtime == 30
    with pytest.raises(ValueError, match="rule 'train': not a small step"):
        res.small("train")


def resources_of(project, rule: str) -> dict:
    """The resources Snakemake's dry run shows for the first job of ``rule``."""
    out = run(["snakemake", "-n", "--forceall"], project).stdout
    block = out.split(f"rule {rule}:", 1)[1]
    line = re.search(r"resources: (.*)", block).group(1)
    return dict(kv.split("=", 1) for kv in line.split(", "))


def test_rules_take_their_requests_and_default_profile_leaves_gpu(tiny_project):
    """The rules pass ncil/pipeline/resources.py's numbers on; profiles/default caps no `gpu` request (a global
    gpu=0 there used to strip the GPU from every job of a GPU grid, also under --profile)."""
    cpu = resources_of(tiny_project, "train_base")
    assert (cpu["gpu"], cpu["mem_mb"], cpu["runtime"]) == ("0", "1536", "10")
    run(["python", "-m", "ncil", "params", "runtime=gpu"], tiny_project)
    gpu = resources_of(tiny_project, "train_base")
    # device cuda, threads 4: (4000 + 3 x 4 x 130 x 64 / 1e6) x 1.25 = 5000.1 -> 5120 MB
    assert (gpu["gpu"], gpu["mem_mb"], gpu["runtime"]) == ("1", "5120", "10")
