"""Prepared data in memory: checksum-verified loading, class selection, normalisation, batches.

Augmentation runs batched on tensors, each random draw from a ``torch.Generator`` owned by the
caller and seeded from the run's config, so a run's data order and augmentation are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ncil import io, paths


@dataclass(frozen=True)
class Split:
    """One data split: uint8 images (N, H, W, C) and original int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


def load_split(dataset: str, split: str, root: str = ".") -> Split:
    """Load one split after checking every file against the manifest's SHA-256."""
    manifest = io.verify_manifest(f"{root}/{paths.data_manifest(dataset)}")
    image_file, label_file = (f"{root}/{p}" for p in paths.data_arrays(dataset, split))
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


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Batched RandomCrop(size, padding): zero-pad by ``padding`` then crop at a random offset per image."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h))  # (N, H)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w))  # (N, W)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Batched RandomHorizontalFlip(0.5)."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def augment(x: torch.Tensor, crop_padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    x = random_crop(x, crop_padding, generator)
    if hflip:
        x = random_hflip(x, generator)
    return x


def batches(n: int, batch_size: int, generator: torch.Generator | None):
    """Index batches over ``n`` rows: shuffled with ``generator`` (None = in order), last batch kept."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
