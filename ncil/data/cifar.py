"""CIFAR-100 from the official ``cifar-100-python/`` folder (pickled ``train``, ``test``, ``meta``).

Each of ``train`` / ``test`` is a pickled dict with ``b'data'`` (N, 3072) uint8 rows (1024 red, then
1024 green, then 1024 blue values of a 32x32 image, row-major), ``b'fine_labels'`` (N ints, 0..99),
``b'coarse_labels'`` and ``b'filenames'``; ``meta`` holds ``b'fine_label_names'``. The labels are the
fine labels, whose order is the alphabetical order of the names (as torchvision's CIFAR100).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ncil.data.images import RawDataset, array_set
from ncil.pipeline.config import DatasetConfig
from ncil.pipeline.io import ArtifactError

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
FILES = ("train", "test", "meta")


def missing_message(root: Path) -> str:
    return (
        f"{root}: CIFAR-100 not found (expected the folder cifar-100-python/ holding the files "
        f"train, test and meta). Either extract the official archive there "
        f"(curl -O {URL} && tar xzf cifar-100-python.tar.gz -C {root.parent}), point dataset.root at an "
        f"existing cifar-100-python/ folder, or let torchvision download it: "
        f"python -m ncil grid cifar100 dataset.download=true"
    )


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise ArtifactError(f"{path}: file missing from the CIFAR-100 folder (expected {', '.join(FILES)})")
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise ArtifactError(f"{path}: corrupt or truncated CIFAR-100 pickle ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    return data


def _field(data: dict, path: Path, key: bytes):
    if key not in data:
        raise ArtifactError(f"{path}: {key.decode()}: missing from the CIFAR-100 pickle")
    return data[key]


def _split(path: Path, n_names: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 32, 32, 3) and int64 fine labels (N,) of one pickled split."""
    data = _unpickle(path)
    rows = np.asarray(_field(data, path, b"data"), dtype=np.uint8)
    labels = np.asarray(_field(data, path, b"fine_labels"), dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32 or len(rows) != len(labels):
        raise ArtifactError(
            f"{path}: data: expected (N, 3072) uint8 rows with N fine_labels, got {rows.shape} and {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= n_names):
        raise ArtifactError(f"{path}: fine_labels: expected values in 0..{n_names - 1}")
    images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 3, 32, 32) -> (N, 32, 32, 3)
    return np.ascontiguousarray(images), labels


def download(root: Path) -> None:
    """torchvision's CIFAR100(download=True): fetch and check the archive, extract it in root.parent."""
    if root.name != "cifar-100-python":
        raise ArtifactError(f"{root}: dataset.root: a download extracts to a folder named cifar-100-python/")
    from torchvision.datasets import CIFAR100

    CIFAR100(root=str(root.parent), train=True, download=True)


def load(cfg: DatasetConfig) -> RawDataset:
    root = Path(cfg.root)
    if not root.is_dir() and cfg.download:
        download(root)
    if not root.is_dir():
        raise ArtifactError(missing_message(root))
    meta_path = root / "meta"
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in _field(_unpickle(meta_path), meta_path, b"fine_label_names")]
    train_images, train_labels = _split(root / "train", len(names))
    test_images, test_labels = _split(root / "test", len(names))
    return RawDataset(names, array_set(train_images, train_labels), array_set(test_images, test_labels), str(root))
