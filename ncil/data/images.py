"""Raw data sets as lazily loaded image sets, and the prepare-time geometry (resize, centre crop).

A source module (``cifar``, ``tinyimagenet``, ``imagefolder``) turns an on-disk layout into a
``RawDataset``: class names plus a training set and, where the data set has one, its real test set.
Images are only decoded when ``prepare`` reads them, block by block, so a large data set never has
to fit in memory (``prepare`` decodes every image once to check it, before it touches the old
prepared data, then again to write it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ncil.pipeline.io import ArtifactError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass(frozen=True)
class ImageSet:
    """Labels (int64, N) and a loader of rows: ``load(rows)`` -> uint8 (len(rows), H, W, C)."""

    labels: np.ndarray
    load: Callable[[np.ndarray], np.ndarray]

    def subset(self, rows: np.ndarray) -> "ImageSet":
        rows = np.asarray(rows, dtype=np.int64)
        return ImageSet(self.labels[rows], lambda r, _base=rows, _load=self.load: _load(_base[np.asarray(r)]))


@dataclass(frozen=True)
class RawDataset:
    classes: list[str]  # class names; original label i is classes[i]
    train: ImageSet
    test: ImageSet | None  # the data set's own test set (None: hold out test_fraction of train)
    source: str  # where it was read from (recorded in the manifest)


def array_set(images: np.ndarray, labels) -> ImageSet:
    return ImageSet(np.asarray(labels, dtype=np.int64), lambda rows: images[np.asarray(rows)])


def file_set(files: list[Path], labels, size: int, channels: int, resize: int) -> ImageSet:
    """Images decoded from ``files`` with ``fit_image`` when rows are loaded."""

    def load(rows) -> np.ndarray:
        out = np.empty((len(rows), size, size, channels), dtype=np.uint8)
        for i, row in enumerate(np.asarray(rows)):
            out[i] = read_image(files[int(row)], size, channels, resize)
        return out

    return ImageSet(np.asarray(labels, dtype=np.int64), load)


def read_image(path: Path, size: int, channels: int, resize: int) -> np.ndarray:
    """Decode one image file to uint8 (size, size, channels); a broken file fails naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = eight_bit(img, path).convert("RGB" if channels == 3 else "L")
            return fit_image(img, size, resize)
    except Image.DecompressionBombError as err:  # more pixels than Pillow's limit (Image.MAX_IMAGE_PIXELS) allows
        raise ArtifactError(f"{path}: refused as a possible decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ArtifactError(f"{path}: cannot decode the image ({type(err).__name__}: {err})") from None


SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")  # how Pillow opens a 16-bit grey PNG or TIFF


def eight_bit(img, path: Path):
    """``img`` with 8-bit channels, for ``convert``: 16-bit grey (0..65535) scaled down, not clipped.

    A 16-bit grey pixel is stored as its high byte (v >> 8), as Pillow reads a 16-bit colour PNG and
    libpng's strip_16 does, so the image keeps its contrast (``convert`` would clip every value above 255
    to white). 32-bit integer and float pixels (modes I, F; signed 16-bit) have no range to scale from and
    are refused.
    """
    from PIL import Image

    if img.mode in SIXTEEN_BIT_GREY:
        return Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8))  # (H, W) uint8, mode L
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        raise ArtifactError(f"{path}: pixels of mode {img.mode} (32-bit integer, float or signed) have no range to "
                            "scale to 8 bits; save the image with 8- or 16-bit unsigned channels")
    return img


def fit_image(img, size: int, resize: int) -> np.ndarray:
    """torchvision's Resize(resize) (shorter side, bilinear; skipped when 0) then CenterCrop(size).

    CenterCrop pads with zeros when the image is smaller than ``size``, as torchvision does.
    Returns uint8 (size, size, C).
    """
    from PIL import Image

    if resize:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = resize, int(resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]  # (H, W) -> (H, W, 1)
    h, w = arr.shape[:2]
    if h < size or w < size:  # pad to at least size x size, centred (torchvision's CenterCrop)
        top, left = max(size - h, 0) // 2, max(size - w, 0) // 2
        padded = np.zeros((max(h, size), max(w, size), arr.shape[2]), dtype=np.uint8)
        padded[top : top + h, left : left + w] = arr
        arr, (h, w) = padded, padded.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (by suffix, case-insensitive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_tree(split_dir: Path, classes: list[str], what: str) -> tuple[list[Path], list[int]]:
    """Files and labels of a ``<split_dir>/<class>/<image>`` tree, in class then file-name order."""
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            raise ArtifactError(f"{folder}: class folder missing from the {what} (expected one folder per class)")
        found = image_files(folder)
        if not found:
            raise ArtifactError(f"{folder}: no image files in this class folder of the {what}")
        files += found
        labels += [label] * len(found)
    return files, labels


def first_per_class(labels: np.ndarray, limit: int) -> np.ndarray:
    """Rows of the first ``limit`` items of every class (all rows when ``limit`` is 0), in order."""
    if not limit:
        return np.arange(len(labels))
    keep, seen = [], {}
    for row, label in enumerate(labels.tolist()):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] <= limit:
            keep.append(row)
    return np.asarray(keep, dtype=np.int64)
