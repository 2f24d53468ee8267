"""``prepare``: write a data set under ``data/<name>/`` as NPY arrays with a checksum manifest.

Images are stored as uint8 (N, H, W, C), labels as int64 original class ids. The train/val/test
split is stratified and seeded (``dataset.split_seed``); ``val`` is carved from the training images
and is the only split used for tuning.
"""

from __future__ import annotations

import numpy as np

from ncil import io, paths
from ncil.config import DatasetConfig


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 images with 17 grey levels (0..16).

    Returned as uint8 (N, 8, 8, 1) scaled to 0..255 (``round(v * 255 / 16)``) and int64 labels.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    return images, bunch.target.astype(np.int64)


SOURCES = {"digits": load_digits_images}


def stratified_split(labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int) -> dict:
    """Indices of train / val / test: per class, ``test_fraction`` to test, then ``val_fraction`` of
    the rest to val; each split sorted ascending so its order does not depend on the shuffle."""
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round((len(idx) - n_test) * val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def prepare(cfg: DatasetConfig, out_dir: str | None = None) -> dict:
    """Write the data set's arrays and manifest; return the number of images per split."""
    if cfg.name not in SOURCES:
        raise ValueError(f"dataset.name: no prepare step for {cfg.name!r} (available: {sorted(SOURCES)})")
    images, labels = SOURCES[cfg.name]()
    if images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.channels):
        raise ValueError(
            f"dataset.image_size/channels: the {cfg.name} source has images of shape {images.shape[1:]}, "
            f"config expects ({cfg.image_size}, {cfg.image_size}, {cfg.channels})"
        )
    if len(np.unique(labels)) != cfg.n_classes:
        raise ValueError(f"dataset.n_classes: the source has {len(np.unique(labels))} classes, config says {cfg.n_classes}")
    split = stratified_split(labels, cfg.test_fraction, cfg.val_fraction, cfg.split_seed)
    written, counts = [], {}
    for name in paths.DATA_SPLITS:
        image_file, label_file = paths.data_arrays(cfg.name, name)
        if out_dir is not None:
            image_file = f"{out_dir}/{image_file.rsplit('/', 1)[1]}"
            label_file = f"{out_dir}/{label_file.rsplit('/', 1)[1]}"
        io.write_array(image_file, images[split[name]])
        io.write_array(label_file, labels[split[name]])
        written += [image_file, label_file]
        counts[name] = int(len(split[name]))
    manifest = paths.data_manifest(cfg.name) if out_dir is None else f"{out_dir}/{paths.MANIFEST_NAME}"
    io.write_manifest(
        manifest,
        cfg.name,
        written,
        {"counts": counts, "n_classes": cfg.n_classes, "image_shape": list(images.shape[1:]),
         "split_seed": cfg.split_seed, "test_fraction": cfg.test_fraction, "val_fraction": cfg.val_fraction},
    )
    return counts
