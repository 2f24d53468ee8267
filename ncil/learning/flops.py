"""Analytic FLOPs of the paper ViT's training step, known GPUs' dense bf16 peaks, and hours per setting.

Pure functions (no torch). Conventions: 1 multiply-add = 2 FLOP; only matrix products are counted
(linear layers, the patch-embedding convolution, attention's two products, GPSA's positional
projection), as torch's FLOP counter does; a backward pass costs twice its forward, so a training
row costs 3 forwards and an old-model (teacher) row 1. At 32x32 / patch 4 the forward is
1.209 GFLOP per image (method-spec 9.1); ``tests/test_gpu_check.py`` checks the count against
``torch.utils.flop_counter`` on ``ncil.models``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


def vit_forward_flops(img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                      mlp_ratio: float, in_chans: int = 3) -> dict[str, int]:
    """FLOPs of one image's forward through ``ncil.models.vit.ViT`` (no head), by part, and their total.

    N tokens of dimension D. A GPSA block (timm ConViT): qk (D -> 2D) and v (D -> D) projections,
    q k^T and attn v (2 N^2 D each), the positional projection of the (N, N, 3) relative indices to
    H heads, the output projection (D -> D) and the MLP (D -> rD -> D). The class-attention block
    (timm CaiT): q of [CLS] only, k and v of all N + 1 tokens, [CLS]'s attention over them, the output
    projection and the MLP of [CLS] alone.
    """
    n = (img_size // patch_size) ** 2
    d, hidden = embed_dim, int(embed_dim * mlp_ratio)
    patch = 2 * n * (in_chans * patch_size**2) * d
    gpsa = (2 * n * d * 2 * d + 2 * n * d * d  # qk, v
            + 2 * n * n * d + 2 * n * n * d  # q k^T, attn v
            + 2 * n * n * 3 * num_heads  # positional projection (3 -> H) of every token pair
            + 2 * n * d * d  # output projection
            + 2 * 2 * n * d * hidden)  # MLP
    m = n + 1  # [CLS] attends over itself and the patches
    class_attn = (2 * d * d + 2 * 2 * m * d * d  # q of [CLS]; k, v of all tokens
                  + 2 * m * d + 2 * m * d  # q k^T, attn v (one query)
                  + 2 * d * d + 2 * 2 * d * hidden)  # output projection, MLP of [CLS]
    parts = {"patch_embed": patch, "gpsa_blocks": depth * gpsa, "class_attention": class_attn}
    return {**parts, "total": sum(parts.values())}


def forward_flops(model) -> int:
    """Forward FLOPs per image of a ``ModelConfig`` (RGB input)."""
    return vit_forward_flops(model.img_size, model.patch_size, model.embed_dim, model.depth, model.num_heads,
                             model.mlp_ratio)["total"]


def step_flops(forward: int, embed_dim: int, batch: int, rotations: int, n_outputs: int, teacher: bool,
               extra_head_rows: int = 0) -> int:
    """FLOPs of one training step of ``batch`` images: ``rotations`` x batch rows forward and backward
    through the backbone (3 forwards each), one teacher forward per row when ``teacher``, and the head
    (D -> ``n_outputs``, also 3x) on every row plus ``extra_head_rows`` (PR's restored prototypes, PASS's
    augmented prototypes)."""
    rows = rotations * batch
    head = 2 * embed_dim * n_outputs
    return 3 * rows * forward + (rows * forward if teacher else 0) + 3 * (rows + extra_head_rows) * head


@dataclass(frozen=True)
class Peak:
    pattern: str  # a whole word (or words) of torch.cuda.get_device_name(), checked in table order
    tflops: float  # dense bf16 tensor-core peak (without structured sparsity), TFLOP/s
    source: str


# Dense bf16 peaks: the vendors' datasheet figures "with sparsity" halved (the datasheets footnote that
# their bf16 numbers assume 2:4 sparsity). More specific names first (H100 PCIe before H100); a pattern
# matches whole words only, so "A10" is not "A100" or "A10G" and "L4" is not "L40S". A device not listed
# gets no utilisation unless its peak is given (scripts/gpu_check.py --peak-tflops).
DEVICE_PEAKS = (
    Peak("H200 NVL", 835.5, "NVIDIA H200 NVL datasheet: BF16 1,671 TFLOPS with sparsity"),
    Peak("H200", 989.5, "NVIDIA H200 (SXM) datasheet: BF16 1,979 TFLOPS with sparsity"),
    Peak("H100 PCIe", 756.5, "NVIDIA H100 PCIe datasheet: BF16 1,513 TFLOPS with sparsity"),
    Peak("H100 NVL", 835.5, "NVIDIA H100 NVL datasheet: BF16 1,671 TFLOPS with sparsity"),
    Peak("H100", 989.5, "NVIDIA H100 SXM datasheet: BF16 1,979 TFLOPS with sparsity"),
    Peak("A100", 312.0, "NVIDIA A100 datasheet: BF16 312 TFLOPS dense (624 with sparsity)"),
    Peak("L40S", 362.05, "NVIDIA L40S datasheet: BF16 362.05 TFLOPS dense (733 with sparsity)"),
    Peak("L4", 121.0, "NVIDIA L4 datasheet: BF16 242 TFLOPS with sparsity"),
    Peak("A10", 125.0, "NVIDIA A10 datasheet: BF16 125 TFLOPS dense (250 with sparsity)"),
)


def known_peak(device_name: str) -> Peak | None:
    """The first table row whose pattern occurs in ``device_name`` as whole words, or None."""
    for peak in DEVICE_PEAKS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(peak.pattern)}(?![A-Za-z0-9])", device_name, re.IGNORECASE):
            return peak
    return None


def task_steps(task_classes: list[int], images_per_class: int, batch: int, epochs: list[int]) -> list[int]:
    """Optimisation steps of each task: epochs x ceil(images / batch) (the last batch is kept)."""
    return [e * math.ceil(k * images_per_class / batch) for k, e in zip(task_classes, epochs, strict=True)]


def setting_flops(task_classes: list[int], images_per_class: int, batch: int, epochs: list[int], forward: int,
                  embed_dim: int, rotations: int = 4) -> float:
    """Training FLOPs of one run of a setting: task 0 without a teacher, every later task with one; the head
    grows with the classes seen (``rotations`` columns each) and PR / protoAug add 2 x batch head rows."""
    steps = task_steps(task_classes, images_per_class, batch, epochs)
    total, seen = 0.0, 0
    for t, (k, n) in enumerate(zip(task_classes, steps)):
        seen += k
        extra = 0 if t == 0 else (rotations + 1) * batch  # PR: one restored row per rotated row; protoAug: one per image
        total += n * step_flops(forward, embed_dim, batch, rotations, rotations * seen, teacher=t > 0,
                                extra_head_rows=extra)
    return total


def hours(flop: float, flop_per_s: float | None) -> float | None:
    """Hours at a measured rate (None when no rate was measured)."""
    return None if not flop_per_s else flop / flop_per_s / 3600.0
