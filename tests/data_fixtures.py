"""Tiny data sets written in the real on-disk formats (built per test in a temporary folder).

* ``cifar100``: ``cifar-100-python/{train,test,meta}``, pickled dicts with bytes keys as in the
  official archive (``b'data'`` (N, 3072) uint8 rows in channel-major order, ``b'fine_labels'``,
  ``b'coarse_labels'``, ``b'filenames'``, ``b'batch_label'``; meta ``b'fine_label_names'``).
* ``tinyimagenet``: ``tiny-imagenet-200/`` with ``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
  ``train/<wnid>/<wnid>_boxes.txt``, ``val/images/*.JPEG`` and ``val/val_annotations.txt``.
* ``imagenet``: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` with odd image sizes (resize + crop).
* ``folder``: ``train/<class>/*.png`` and ``test/<class>/*.png``.

Every image of class ``c`` is a noisy version of a class-specific colour pattern, so a model can
learn something in one epoch; the noise comes from a seeded generator (the fixtures are fixed).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def class_image(rng: np.random.Generator, label: int, h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3): a per-class gradient direction and colour plus noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    angle = label * 1.3
    base = np.cos(angle) * yy + np.sin(angle) * xx  # (h, w)
    colour = np.array([(label * 67) % 256, (label * 131) % 256, (label * 199) % 256]) / 255.0
    img = base[..., None] * 0.6 + colour[None, None, :] * 0.4 + rng.normal(0, 0.05, (h, w, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_cifar100(root: Path, n_classes: int = 6, train_per_class: int = 8, test_per_class: int = 4) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [c for _ in range(per_class) for c in range(n_classes)]  # interleaved, as the real files
        images = np.stack([class_image(rng, c, 32, 32) for c in labels])  # (N, 32, 32, 3)
        rows = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)  # (N, 3, 32, 32) -> (N, 3072)
        data = {
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))],
            b"batch_label": f"{split} batch 1 of 1".encode(),
            b"fine_labels": labels,
            b"coarse_labels": [c // 5 for c in labels],
            b"data": rows,
        }
        with open(folder / split, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    meta = {b"fine_label_names": [f"class{c:02d}".encode() for c in range(n_classes)],
            b"coarse_label_names": [f"super{c:02d}".encode() for c in range((n_classes + 4) // 5)]}
    with open(folder / "meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return folder


def _jpeg(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)


def write_tinyimagenet(root: Path, n_classes: int = 6, train_per_class: int = 8, val_per_class: int = 3,
                       size: int = 64) -> Path:
    folder = root / "tiny-imagenet-200"
    rng = np.random.default_rng(1)
    wnids = [f"n{1000000 + 7919 * c:08d}" for c in range(n_classes)]
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # not sorted in the real file either
    for c, wnid in enumerate(wnids):
        boxes = []
        for i in range(train_per_class):
            name = f"{wnid}_{i}.JPEG"
            _jpeg(folder / "train" / wnid / "images" / name, class_image(rng, c, size, size))
            boxes.append(f"{name}\t0\t0\t{size - 1}\t{size - 1}")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    lines, k = [], 0
    for i in range(val_per_class):
        for c, wnid in enumerate(wnids):
            name = f"val_{k}.JPEG"
            _jpeg(folder / "val" / "images" / name, class_image(rng, c, size, size))
            lines.append(f"{name}\t{wnid}\t0\t0\t{size - 1}\t{size - 1}")
            k += 1
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def write_imagenet(root: Path, wnids: list[str], train_per_class: int = 8, val_per_class: int = 3) -> Path:
    """An ImageNet-style tree; image sizes vary (e.g. 20x28, 28x20) to exercise resize + crop."""
    folder = root / "imagenet"
    rng = np.random.default_rng(2)
    for c, wnid in enumerate(wnids):
        for split, n in (("train", train_per_class), ("val", val_per_class)):
            for i in range(n):
                h, w = (20, 28) if (i + c) % 2 else (28, 20)
                _jpeg(folder / split / wnid / f"{wnid}_{i:04d}.JPEG", class_image(rng, c, h, w))
    return folder


def write_folder(root: Path, classes: list[str], train_per_class: int = 8, test_per_class: int = 3,
                 size: int = 16) -> Path:
    from PIL import Image

    folder = root / "my_images"
    rng = np.random.default_rng(3)
    for c, name in enumerate(classes):
        for split, n in (("train", train_per_class), ("test", test_per_class)):
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(class_image(rng, c, size, size)).save(folder / split / name / f"{i:03d}.png")
    return folder
