"""Provenance recorded in result files (the code's fingerprints are ``ncil.pipeline.fingerprints``'s): the setting label and
the platform (CPU type, torch build, GPU) that produced an artifact."""

from __future__ import annotations

import platform as _platform
from pathlib import Path


def setting_label(initial: int, increment: int, n_tasks: int) -> str:
    """The paper's name of a setting: F + C x T (T incremental tasks after the base task).

    Exact for every setting that exists: ``ncil.data.scenario.task_sizes`` (and so ``params.yaml``'s
    parser and ``split``) refuses an increment C that does not divide the classes after the base task.
    """
    return f"{initial}+{increment}x{n_tasks - 1}"


# --- The platform ---------------------------------------------------------------------------------
#
# Bit-identity holds per platform: PyTorch, MKL and oneDNN pick kernels by CPU vendor and instruction
# set, and a GPU rounds as its own kind does. So the platform is recorded beside an artifact (a sidecar
# such as a checkpoint's platform.json), never inside the DVC-tracked bytes: those must stay equal
# across CPU types wherever the numerics allow it (runtime.numerics: portable).

# The fields of a platform record that decide floating-point results (the rest is for people).
CPU_PLATFORM_KEYS = ("machine", "cpu_vendor", "cpu_family", "cpu_model", "torch", "torch_cpu_capability")
PLATFORM_KEYS = (*CPU_PLATFORM_KEYS, "cuda_device", "numerics")  # the last two only where recorded
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")  # the ones kernels dispatch on


def cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor's fields of a /proc/cpuinfo text (pure)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def platform_record(cpuinfo: str, machine: str, torch_version: str, torch_cuda: str | None, cpu_capability: str,
                    cuda_device: str | None = None, numerics: str | None = None, processor: str = "") -> dict:
    """The platform as far as it decides the numbers (pure): CPU vendor, family, model and the flags
    kernels dispatch on, torch's version (with its build tag) and CUDA build, ATen's CPU capability;
    the CUDA device's name when one is used and the numerics mode when given."""
    info = cpuinfo_fields(cpuinfo)
    record = {
        "machine": machine,
        "cpu_vendor": info.get("vendor_id", ""),
        "cpu_family": info.get("cpu family", ""),
        "cpu_model": info.get("model", ""),
        "cpu_name": info.get("model name", processor),
        "cpu_flags": sorted(set(info.get("flags", "").split()) & set(CPU_FLAGS)),
        "torch": str(torch_version),  # torch.__version__ is a str subclass that weights_only loads refuse
        "torch_cuda": str(torch_cuda or "none"),
        "torch_cpu_capability": cpu_capability,
    }
    if cuda_device is not None:
        record["cuda_device"] = cuda_device
    if numerics is not None:
        record["numerics"] = numerics
    return record


def current_platform(device=None, numerics: str | None = None) -> dict:
    """This machine's ``platform_record``; ``device`` (a torch.device) adds the GPU's name when CUDA."""
    import torch

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    cuda_device = None
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        cuda_device = torch.cuda.get_device_name(device)
    return platform_record(cpuinfo, _platform.machine(), torch.__version__, torch.version.cuda,
                           torch.backends.cpu.get_cpu_capability(), cuda_device, numerics, _platform.processor())


def same_platform(a: dict, b: dict) -> bool:
    """Whether two platform records round alike (the fields of ``PLATFORM_KEYS``)."""
    return all(a.get(k) == b.get(k) for k in PLATFORM_KEYS)
