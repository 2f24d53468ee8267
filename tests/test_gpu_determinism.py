"""Two GPU trainings of the same config repeat bit for bit at the paper's image sizes (marker ``gpu``).

At 32 px the class-attention block attends over 17 keys, at 224 px over 197 (196 patches of 16 px and
[CLS]); cuDNN attention, which torch picks on sm90 unless ``ncil.runtime.repeatable_attention`` rules it
out, did not repeat its backward at the larger size. The model is the paper ViT's shape shrunk in width
and depth (one GPSA block, dimension 64, two heads of 32) so that both sizes train in seconds; the
attention kernels chosen depend on the head dimension, the dtype (bf16 autocast of the paper preset) and
the number of keys, not on the depth. Comparisons are between two runs of one code path: bytes, no
tolerance.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # noqa: E402 (before torch creates a cuBLAS handle)

import numpy as np
import pytest
import torch

from ncil import plainconf, synthetic, train
from ncil.config import parse_params

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = "cuda"
SIZES = {32: ("cifar100", 8), 224: ("imagenet_subset", 16)}  # image size: (data set, patch size)


def params(size: int):
    dataset, patch = SIZES[size]
    model = {"img_size": size, "patch_size": patch, "embed_dim": 64, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
             "drop_path": 0.1}
    data = plainconf.compose_params(dataset, "vit_paper", "paper", "ours", overrides={
        "model": model, "train": {"epochs": 2, "batch_size": 16, "lr_step": 0},
        "runtime": {"device": DEVICE, "threads": 1, "compile": False}})
    return parse_params(data, source="tests/test_gpu_determinism.py")


def train_once(size: int):
    """(checkpoint payload, centers rows) of the synthetic task 1 (4 old + 4 new classes, 16 images each)."""
    p = params(size)
    job, split, previous, centers = synthetic.incremental_task(p, "ours", 4, 4, 16, seed=1)
    log = logging.getLogger("ncil.test_gpu_determinism")
    log.handlers[:] = [logging.NullHandler()]
    log.propagate = False
    return train.train_task(p, job, split, previous, centers, log)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_two_gpu_trainings_repeat_bitwise(size):
    (a, a_rows), (b, b_rows) = train_once(size), train_once(size)
    assert not torch.backends.cuda.cudnn_sdp_enabled() and not torch.backends.cuda.mem_efficient_sdp_enabled()
    differing = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differing, f"{size} px: tensors differ between two runs: {differing[:5]}"
    assert a["history"] == b["history"]
    for key in a_rows:
        assert np.array_equal(a_rows[key], b_rows[key]), key
