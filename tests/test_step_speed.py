"""Issue 21 items 2, 5 and 6 on the CPU: the frozen teacher's weights cast once (not at every autocast call),
and the step's model functions trace into one graph each (what CUDA graphs need); the GPU halves are in
tests/test_gpu.py."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from ncil import runtime
from ncil.config import parse_params
from ncil.hydra_conf import compose
from ncil.models.network import build_network
from ncil.opcount import StepCounter

TINY = ["preset=official", "model=vit_digits_tiny", "+model.resnet_width=4", "runtime.device=cpu"]
BACKBONES = {"ours": "vit", "pass_resnet18": "resnet18", "ours_official": "hybrid", "fcs": "hybrid"}


@functools.cache
def _params():
    return parse_params(compose(TINY))


def _net(backbone: str, n_outputs: int = 8):
    torch.manual_seed(0)
    return build_network(_params().model, 1, n_outputs, backbone)


@pytest.mark.parametrize("backbone", sorted(set(BACKBONES.values())))
def test_a_teacher_cast_once_computes_what_autocast_computes_without_the_casts(backbone):
    """Autocast rounds a Linear's or Conv2d's fp32 weights to bf16 at every call; ``cast_frozen_weights`` does it
    once, so the forward runs the same kernels on the same bf16 values: bit-identical outputs (CPU autocast has
    the same rule for these layers as CUDA's), with the weight casts gone."""
    net = _net(backbone).eval()
    cast = runtime.cast_frozen_weights(copy.deepcopy(net.backbone), torch.bfloat16)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with StepCounter().counting() as per_call:
            expected = net.backbone(x)
        with StepCounter().counting() as once:
            got = cast(x)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    n_weights = sum(isinstance(m, runtime.AUTOCAST_WEIGHT_MODULES) for m in net.backbone.modules())
    assert n_weights >= 2 and per_call.ops["_to_copy"] - once.ops["_to_copy"] >= n_weights
    assert all(p.dtype == torch.float32 for m in cast.modules() if isinstance(m, torch.nn.LayerNorm | torch.nn.BatchNorm2d)
               for p in m.parameters())  # what autocast reads in fp32 stays fp32


def test_the_teacher_is_cast_only_on_the_gpu_bf16_path():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not runtime.autocast_enabled(cpu, "bf16") and not runtime.autocast_enabled(cuda, "fp32")
    assert runtime.autocast_enabled(cuda, "bf16")
