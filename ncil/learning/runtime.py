"""Seeds, threads and device placement: the one place a job's execution environment is set."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random

import numpy as np
import torch

from ncil.pipeline.config import ConfigError, RuntimeConfig


def derive_seeds(seed: int, task: int, n: int = 4) -> list[int]:
    """Independent 31-bit seeds for task ``task`` of a run with seed ``seed`` (NumPy SeedSequence)."""
    return [int(s) & 0x7FFFFFFF for s in np.random.SeedSequence([seed, task]).generate_state(n)]


# glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD and M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
_TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed CPU memory for reuse instead of returning it to the system at once.

    By default glibc hands large freed blocks back to the kernel, so every training step faults its
    activation memory in again (measured: ~20,000 page faults and +20% time per step of ``ours`` on
    the digits model). Only speed changes, never a result. Returns False where malloc is not glibc's.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def setup(runtime: RuntimeConfig, seed: int, task: int) -> tuple[torch.device, torch.Generator]:
    """Pin threads, seed Python/NumPy/torch from (seed, task) and return (device, data generator).

    The data generator owns the data order and every augmentation draw of the task.
    """
    torch.set_num_threads(runtime.threads)
    keep_freed_memory()
    py_seed, np_seed, torch_seed, data_seed = derive_seeds(seed, task)
    random.seed(py_seed)
    np.random.seed(np_seed)
    torch.manual_seed(torch_seed)
    device = resolve_device(runtime.device)
    check_compile(runtime.compile, device)
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace (read when its first handle is made);
        # a value the user set wins. See CUDA's "Results reproducibility" notes for cuBLAS.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        repeatable_attention()
    torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator(device=device)
    generator.manual_seed(data_seed)
    return device, generator


def repeatable_attention() -> None:
    """Leave ``scaled_dot_product_attention`` on CUDA only its math backend, whose backward repeats bitwise.

    Under ``use_deterministic_algorithms(True, warn_only=True)`` torch 2.11 still picks cuDNN attention
    on sm90, and its backward did not repeat at 224 px (197 keys; docs/gpu-baseline.md); the
    memory-efficient kernel's backward accumulates with atomics; and flash attention's backward is
    deterministic only under ``warn_only=False`` (torch says so on the H200: "Flash Attention defaults to
    a non-deterministic algorithm"), a mode that would make every other op without a deterministic kernel
    an error. The math backend is plain matmuls and a softmax. Its price is small here: the one SDPA of the
    model is the class-attention block's, one query over N + 1 keys. A CUDA job always asks for determinism,
    so this is set in every one; the CPU's backends are not touched (CPU bytes unchanged).
    """
    torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_math_sdp(True)


def resolve_device(name: str, source: str = "params.yaml") -> torch.device:
    """``runtime.device`` as a torch device: the one place it is decided (auto: cuda where torch finds a GPU,
    else cpu). A CUDA device this machine lacks is a ``ConfigError`` naming ``source`` and the way out
    (``ncil.pipeline.devices.cuda_refusal``); the CLI calls this before a train or evaluate job loads any data."""
    from ncil.pipeline.devices import cuda_refusal

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    refusal = cuda_refusal(name, source)
    if refusal:
        raise ConfigError(refusal)
    return torch.device(name)


def maybe_compile(module: torch.nn.Module, setting: bool | str, example: torch.Tensor | None = None) -> torch.nn.Module:
    """``torch.compile`` ``module`` in place (``runtime.compile``); its state_dict keys do not change.

    ``True``: torch.compile's default mode. ``"graphs"``: mode reduce-overhead, which replays each traced
    graph as a CUDA graph (one per input shape: the last partial batch gets its own); the loop marks every
    step's start (``graph_step_begin``) so a step's outputs are never overwritten by the next replay.
    Under ``"graphs"`` an ``example`` input (one image) first fills the module's caches (``fill_caches``).
    """
    if setting == "graphs":
        if example is not None:
            fill_caches(module, example)
        module.compile(mode="reduce-overhead")
    elif setting:
        module.compile()
    return module


def fill_caches(module: torch.nn.Module, example: torch.Tensor) -> None:
    """One forward of ``example`` in eval mode without gradients, before the module is graphed.

    timm's GPSA keeps its relative positions (a function of the token count) as a module attribute that
    its first forward assigns. Assigned inside a CUDA graph, that attribute is a graph output which the
    next replay overwrites while the following call still reads it (torch refuses: "accessing tensor
    output of CUDAGraphs that has been overwritten", seen on an H200). Filled here, the graphed forward
    only reads it. Eval mode and no_grad: no batch-norm statistics move, no dropout or drop-path draw
    is taken, so the training that follows is the one it would have been. A module whose weights
    ``cast_frozen_weights`` made bf16 runs under bf16 autocast, as it does in training.
    """
    was_training = module.training
    module.eval()
    cast = any(q.dtype == torch.bfloat16 for q in module.parameters())  # a teacher after cast_frozen_weights
    with torch.no_grad(), torch.autocast(example.device.type, dtype=torch.bfloat16, enabled=cast):
        module(example)
    module.train(was_training)


def check_compile(setting: bool | str, device: torch.device) -> None:
    """``runtime.compile: graphs`` needs CUDA: a clear error before any training starts."""
    if setting == "graphs" and device.type != "cuda":
        raise ConfigError(f"runtime.compile: graphs (CUDA graphs) needs a CUDA device, got runtime.device {device}")


def graph_step_begin(setting: bool | str) -> None:
    """A training step starts: CUDA-graph replays may reuse the previous step's output memory."""
    if setting == "graphs":
        torch.compiler.cudagraph_mark_step_begin()


# Modules whose weights autocast casts to the compute dtype at every call (CUDA and CPU autocast alike).
AUTOCAST_WEIGHT_MODULES = (torch.nn.Linear, torch.nn.Conv2d)


def autocast_enabled(device: torch.device, precision: str) -> bool:
    return device.type == "cuda" and precision == "bf16"


def cast_frozen_weights(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The Linear and Conv2d weights and biases of a frozen ``module`` in ``dtype``, in place, once.

    Under autocast these layers cast their fp32 parameters to ``dtype`` at every call (round to nearest
    even, as ``Tensor.to``); casting once gives the same values, so a forward under autocast is unchanged
    while the per-call casts are gone. Other parameters (LayerNorm, BatchNorm, positional embeddings,
    GPSA's gates) stay fp32, as autocast reads them. Only for modules that are never trained.
    """
    for m in module.modules():
        if isinstance(m, AUTOCAST_WEIGHT_MODULES):
            m.to(dtype)
    return module


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision`` bf16 on CUDA; a no-op context otherwise (fp32; CPU results stay exact).

    ``precision`` is resolved by ``ncil.pipeline.config.resolve_precision`` (``runtime.precision``, recorded in
    every checkpoint).
    """
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast_enabled(device, precision))
