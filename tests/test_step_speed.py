"""Issue 21 items 2, 5 and 6 on the CPU: the frozen teacher's weights cast once (not at every autocast call),
and the step's model functions trace into one graph each (what CUDA graphs need); the GPU halves are in
tests/test_gpu.py."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from ncil.learning import runtime
from ncil.learning.opcount import StepCounter
from ncil.models.network import build_network
from ncil.pipeline.config import parse_params
from ncil.pipeline.hydra_conf import compose

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


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(BACKBONES))
def test_the_steps_model_functions_trace_without_a_graph_break(method):
    """CUDA graphs (``runtime.compile: graphs``) capture what dynamo traces; a graph break would split the
    forward and leave host work between the pieces. ``fullgraph=True`` raises at the first break; the eager
    backend runs the traced aten ops as they are (no compiler needed on the CPU). Checked: the student's
    backbone in train mode with its backward, the frozen teacher's in eval mode without gradient, and for
    the official preset the key encoder (the student's weights with its own BN buffers)."""
    from ncil.methods import official_step as official

    torch._dynamo.reset()
    backbone = BACKBONES[method]
    net, teacher = _net(backbone).train(), _net(backbone).eval().requires_grad_(False)
    x = torch.randn(6, 1, 8, 8)
    student = torch.compile(net.backbone, fullgraph=True, backend="eager")
    cls, patches = student(x)
    (cls.sum() + patches.sum()).backward()
    assert all(p.grad is not None for p in net.backbone.parameters() if p.requires_grad)
    frozen = torch.compile(teacher.backbone, fullgraph=True, backend="eager")
    with torch.no_grad():
        t_cls, _ = frozen(x)
    eager_cls, _ = teacher.backbone(x)
    # The eager backend runs the traced aten ops in order: the same kernels on the same inputs.
    assert torch.equal(t_cls, eager_cls)
    if backbone == "hybrid":
        buffers = official.key_encoder_buffers(net.backbone)
        keys = torch.compile(official.key_features, fullgraph=True, backend="eager")(net.backbone, x, buffers)
        assert keys.shape == cls.shape and not keys.requires_grad


def test_graphs_is_a_runtime_compile_value_that_needs_cuda():
    from ncil.pipeline.config import ConfigError

    p = parse_params(compose([*TINY, "runtime.compile=graphs"]))
    assert p.runtime.compile == "graphs"
    with pytest.raises(ConfigError, match="runtime.compile: graphs .*CUDA"):
        runtime.setup(p.runtime, 1, 0)
    with pytest.raises(ConfigError, match="runtime.compile: expected false, true or graphs, got 'fast'"):
        parse_params(compose([*TINY, "runtime.compile=fast"]))



@pytest.mark.parametrize("backbone", ["vit", "hybrid"])
def test_filled_caches_are_only_read_by_the_forwards_that_follow(backbone):
    """Under CUDA graphs a module attribute assigned inside the graph is a graph output the next replay
    overwrites (the H200 refused the GPSA's ``rel_indices`` so). After ``runtime.fill_caches`` no forward,
    in train or eval mode, assigns one again; and the fill took no random draw and moved no BN statistic."""
    net = _net(backbone).train()
    example = torch.zeros(1, 1, 8, 8)
    gpsa = [m for m in net.backbone.modules() if hasattr(m, "get_rel_indices")]
    assert gpsa
    buffers = {k: v.clone() for k, v in net.backbone.named_buffers() if not k.endswith("rel_indices")}
    rng = torch.get_rng_state()
    runtime.fill_caches(net.backbone, example)
    assert net.backbone.training and torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(v, buffers[k]) for k, v in net.backbone.named_buffers() if k in buffers)
    filled = [m.rel_indices for m in gpsa]
    assert all(t is not None and t.shape[1] == t.shape[2] > 1 for t in filled)
    net.backbone(torch.randn(3, 1, 8, 8))
    net.backbone.eval()(torch.randn(2, 1, 8, 8))
    assert all(m.rel_indices is t for m, t in zip(gpsa, filled, strict=True))


@pytest.mark.parametrize("backbone", sorted(set(BACKBONES.values())))
def test_a_cast_teacher_fills_its_caches(backbone):
    """The frozen teacher is graphed after ``cast_frozen_weights`` (bf16 Linear/Conv2d weights, fp32 norms):
    its cache fill must run as its training forwards do, under bf16 autocast (an H200 run refused a plain
    fp32 forward: "Input type (float) and bias type (c10::BFloat16) should be the same")."""
    teacher = runtime.cast_frozen_weights(_net(backbone).eval().backbone, torch.bfloat16)
    runtime.fill_caches(teacher, torch.zeros(1, 1, 8, 8))
    assert all(m.rel_indices.shape[1] > 1 for m in teacher.modules() if hasattr(m, "get_rel_indices"))


@pytest.mark.slow
def test_compiled_training_on_the_cpu_is_the_same_training_within_the_seed_spread():
    """Issue 21 item 4 on the CPU: ``runtime.compile: true`` (inductor's fused kernels, other float orders than
    eager) against eager, seeds 1-3 of the synthetic task with the tiny ViT, judged by ``test_gpu.assert_same_training``
    (every epoch's mean loss and the final accuracy within the seed-to-seed spread). Compiled once (about a
    minute on 2 cores); the other seeds reuse it. The same criterion runs on CUDA for compiled and graphed runs."""
    import test_gpu

    eager = test_gpu.final_stats(test_gpu.tiny_params("ours", device="cpu"))
    torch._dynamo.reset()
    compiled = test_gpu.final_stats(test_gpu.tiny_params("ours", compile_=True, device="cpu"), fresh_compile=False)
    test_gpu.assert_same_training(eager, compiled)
    # Different float orders, not a silent fallback to eager: some epoch's loss differs in its bits.
    assert any(e[0] != c[0] for e, c in zip(eager, compiled, strict=True))
