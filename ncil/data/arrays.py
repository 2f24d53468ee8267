"""Prepared data in memory: checksum-verified loading, class selection, normalisation, batches.

The data order is drawn from a ``torch.Generator`` owned by the caller and seeded from the run's
config; augmentation lives in ``ncil.data.augment`` (batched, same generator).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ncil.pipeline import io, paths


@dataclass(frozen=True)
class Split:
    """One data split: uint8 images (N, H, W, C) and original int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


def load_split(dataset: str, split: str, root: str = ".") -> Split:
    """Load one split after checking its two files against the manifest's sizes and SHA-256.

    The other splits' files are checked when they are loaded (a test-set load does not hash the
    training images, 19 GB for ImageNet-Subset).
    """
    image_file, label_file = (f"{root}/{p}" for p in paths.data_arrays(dataset, split))
    manifest = io.verify_manifest(f"{root}/{paths.data_manifest(dataset)}",
                                  names=[Path(image_file).name, Path(label_file).name])
    images, labels = io.read_array(image_file, mmap=True), io.read_array(label_file)  # rows load when selected
    if images.dtype != np.uint8 or images.ndim != 4:
        raise io.ArtifactError(f"{image_file}: expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise io.ArtifactError(f"{label_file}: expected {len(images)} labels, got shape {labels.shape}")
    expected = manifest.get("counts", {}).get(split)
    if expected is not None and expected != len(images):
        raise io.ArtifactError(f"{image_file}: expected {expected} images (manifest), found {len(images)}")
    return Split(images, labels)


def select_classes(data: Split, classes: list[int], label_map: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose original label is in ``classes``: (row indices, images, incremental labels)."""
    rows = np.flatnonzero(np.isin(data.labels, np.asarray(classes, dtype=data.labels.dtype)))
    labels = np.asarray([label_map[int(o)] for o in data.labels[rows]], dtype=np.int64)
    return rows, data.images[rows], labels


def to_tensor(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)  # (N, C, H, W)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def to_uint8_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 (N, C, H, W), the layout the batched augmentation takes."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


# DeiT's repeated-augmentation sampler (RASampler; DyTox's --repeated-aug, docs/dytox.md section 5): every image
# drawn RA_COPIES times in a row, and an epoch of floor(n / RA_ROUND) * RA_ROUND of those entries.
RA_COPIES = 3
RA_ROUND = 256


def repeated_augmentation_size(n: int, batch_size: int) -> tuple[int, int]:
    """(rows, steps) of a repeated-augmentation epoch over ``n`` images: floor(n / 256) * 256 rows in batches of
    ``batch_size``, the last partial batch dropped when there is more than one batch (the released loader's
    ``drop_last=len(sampler) > batch_size``). n < 256 gives (0, 0): the released sampler yields nothing."""
    rows = n // RA_ROUND * RA_ROUND
    if rows > batch_size:
        rows = rows // batch_size * batch_size
    return rows, -(-rows // batch_size)


def repeated_augmentation_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The index batches of one repeated-augmentation epoch (``repeated_augmentation_size``): a permutation of the
    ``n`` images drawn with ``generator``, each index repeated RA_COPIES times in a row (i i i j j j ...), cut to
    the epoch's rows. The copies are augmented independently by the step; on one device at a global batch of 256
    the batches hold exactly the rows of the released two-process loader's global batches."""
    rows, _ = repeated_augmentation_size(n, batch_size)
    order = torch.randperm(n, generator=generator).repeat_interleave(RA_COPIES)[:rows]
    return list(order.split(batch_size)) if rows else []


def batches(n: int, batch_size: int, generator: torch.Generator | None):
    """Index batches over ``n`` rows: shuffled with ``generator`` (None = in order), last batch kept."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
