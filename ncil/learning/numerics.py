"""CPU numerics mode (``runtime.numerics``): which kernels torch, MKL and oneDNN may pick.

``native`` lets each library dispatch on the CPU it finds (fastest; bit-identical per CPU type only:
an AVX2 and an AVX-512 machine round differently from the first training step on). ``portable``
pins all three to one code path before torch is loaded: MKL's conditional numerical reproducibility
in its COMPATIBLE branch, ATen's vectorised kernels at AVX2, oneDNN's JIT at AVX2. These libraries
read the variables once, when they load, so the mode must be set before ``import torch``: the CLI
does it first thing in every process a workflow step starts.

Pinning the libraries is not enough for instructions whose results are implementation-defined:
``rcpps`` / ``rsqrtps`` (and their AVX forms) promise only a maximum relative error, and the exact
bits come from each microarchitecture's tables. ``torch.sqrt`` on float32 is such a kernel (it is not
correctly rounded: about 1 in 6 results differ from the IEEE square root), and Adam's denominator
sqrt(v) uses it, so ``portable`` also builds Adam with ``fused=True``: ATen's fused CPU kernel takes
the square root with the IEEE ``vsqrtps`` instruction, which every x86 CPU rounds the same way
(``adam_options``; issue 14).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

PORTABLE_ENV = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def environment(mode: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` with the variables of ``mode`` set (portable) or removed (native); a new dict."""
    out = {k: v for k, v in env.items() if k not in PORTABLE_ENV}
    if mode == "portable":
        out.update(PORTABLE_ENV)
    elif mode != "native":
        raise ValueError(f"runtime.numerics: expected native or portable, got {mode!r}")
    return out


def apply(mode: str) -> None:
    """Set this process's environment for ``mode``; refuse once torch is loaded with other settings."""
    wanted = environment(mode, dict(os.environ))
    changed = {k for k in PORTABLE_ENV if os.environ.get(k) != wanted.get(k)}
    if not changed:
        return
    if "torch" in sys.modules:
        raise RuntimeError(f"runtime.numerics={mode}: torch is already loaded in this process, so "
                           f"{', '.join(sorted(changed))} can no longer take effect; set the mode before importing torch")
    for key in PORTABLE_ENV:
        os.environ.pop(key, None)
    os.environ.update({k: v for k, v in wanted.items() if k in PORTABLE_ENV})


def portable_active(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``env`` (default: this process's environment) carries the portable mode's variables,
    as ``apply("portable")`` sets them; ``apply("native")`` removes them."""
    env = os.environ if env is None else env
    return all(env.get(key) == value for key, value in PORTABLE_ENV.items())


def adam_options(env: Mapping[str, str] | None = None) -> dict[str, bool]:
    """Extra keyword arguments of ``torch.optim.Adam`` in the current mode: ``{"fused": True}`` when
    portable (an IEEE square root in the update, see the module docstring), ``{}`` when native (the
    default single-tensor/foreach path, unchanged)."""
    return {"fused": True} if portable_active(env) else {}
