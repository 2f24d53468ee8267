"""Seeds, threads and device placement: the one place a job's execution environment is set."""

from __future__ import annotations

import random

import numpy as np
import torch

from ncil.config import RuntimeConfig


def derive_seeds(seed: int, task: int, n: int = 4) -> list[int]:
    """Independent 31-bit seeds for task ``task`` of a run with seed ``seed`` (NumPy SeedSequence)."""
    return [int(s) & 0x7FFFFFFF for s in np.random.SeedSequence([seed, task]).generate_state(n)]


def setup(runtime: RuntimeConfig, seed: int, task: int) -> tuple[torch.device, torch.Generator]:
    """Pin threads, seed Python/NumPy/torch from (seed, task) and return (device, data generator).

    The data generator owns the data order and every augmentation draw of the task.
    """
    torch.set_num_threads(runtime.threads)
    py_seed, np_seed, torch_seed, data_seed = derive_seeds(seed, task)
    random.seed(py_seed)
    np.random.seed(np_seed)
    torch.manual_seed(torch_seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(runtime.device)
    generator = torch.Generator(device=device)
    generator.manual_seed(data_seed)
    return device, generator


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device: {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU (keeps CPU results exact and reproducible)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
