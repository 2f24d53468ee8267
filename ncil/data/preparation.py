"""Data preparation (for ``prepare``): a data set under ``data/<name>/`` as NPY arrays with a checksum manifest.

Images are stored as uint8 (N, H, W, C), labels as int64 original class ids. The train/val/test
split is stratified and seeded (``dataset.split_seed``); ``val`` is carved from the training images
and is the only split used for tuning.
"""

from __future__ import annotations

import numpy as np

from ncil.data.catalog import class_split_counts
from ncil.pipeline import io, paths
from ncil.pipeline.config import ConfigError, DatasetConfig


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 images with 17 grey levels (0..16).

    Returned as uint8 (N, 8, 8, 1) scaled to 0..255 (``round(v * 255 / 16)``) and int64 labels.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    return images, bunch.target.astype(np.int64)


SOURCES = {"digits": load_digits_images}


def _raw_loaders() -> dict:
    """Data sets read from raw files under ``dataset.root`` (each returns a ``RawDataset``)."""
    from ncil.data import cifar, imagefolder, tinyimagenet

    return {
        "cifar100": cifar.load,
        "tinyimagenet": tinyimagenet.load,
        "imagenet_subset": imagefolder.load_imagenet_subset,
        "folder": imagefolder.load_folder,
    }


RAW_DATASETS = ("cifar100", "tinyimagenet", "imagenet_subset", "folder")


def missing_message(name: str, root: str) -> str:
    """Where to put data set ``name`` (or how to fetch it) when its folder ``root`` is missing."""
    from pathlib import Path

    from ncil.data import cifar, imagefolder, tinyimagenet

    messages = {"cifar100": cifar.missing_message, "tinyimagenet": tinyimagenet.missing_message,
                "imagenet_subset": imagefolder.imagenet_missing_message}
    if name in messages:
        return messages[name](Path(root))
    return f"{root}: raw data of {name} not found (expected {root}/train/<class>/ and {root}/test/<class>/); set dataset.root"
CHUNK = 512  # images decoded and written per block


def stratified_split(labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int) -> dict:
    """Indices of train / val / test: per class, ``test_fraction`` to test, then ``val_fraction`` of
    the rest to val; each split sorted ascending so its order does not depend on the shuffle."""
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        _, n_val, n_test = class_split_counts(len(idx), test_fraction, val_fraction)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def split_files(dataset: str, split: str, out_dir: str | None) -> tuple[str, str]:
    """The (images, labels) files of one split: the data set's folder, or ``out_dir`` when given."""
    image_file, label_file = paths.data_arrays(dataset, split)
    if out_dir is None:
        return image_file, label_file
    return f"{out_dir}/{image_file.rsplit('/', 1)[1]}", f"{out_dir}/{label_file.rsplit('/', 1)[1]}"


def manifest_file(dataset: str, out_dir: str | None) -> str:
    """The checksum manifest's path, beside the split files of ``split_files``."""
    return paths.data_manifest(dataset) if out_dir is None else f"{out_dir}/{paths.MANIFEST_NAME}"


def begin_writing(manifest: str, sizes: dict) -> None:
    """Before any array is written: check every output can be written and fits, then remove the manifest.

    ``sizes`` maps each array file to its size, in write order. From here until ``write_manifest``
    runs last, the data set has no manifest, so an interrupted prepare never leaves old and new
    arrays under a manifest that looks complete (readers fail: "data manifest not found").
    """
    io.ensure_writable(manifest, *sizes, sizes={**sizes, manifest: MANIFEST_ROOM})
    io.remove_outputs(manifest)


MANIFEST_ROOM = 64 * 1024  # bytes reserved for manifest.json (a few hundred bytes, or ~20 kB of class names)


def shape_message(source: str, found: tuple, image_file: str, shape: tuple) -> str:
    return (f"dataset.image_size/channels: {source} gives images of shape {found} for {image_file}, "
            f"config expects {shape} (set train_resize/test_resize to resize)")


def prepare(cfg: DatasetConfig, out_dir: str | None = None) -> dict:
    """Write the data set's arrays and manifest; return the number of images per split."""
    if cfg.name in RAW_DATASETS:
        return prepare_raw(cfg, out_dir)
    if cfg.name not in SOURCES:
        raise ValueError(
            f"dataset.name: no prepare step for {cfg.name!r} (available: {sorted([*SOURCES, *RAW_DATASETS])})"
        )
    images, labels = SOURCES[cfg.name]()
    if images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.channels):
        raise ValueError(
            f"dataset.image_size/channels: the {cfg.name} source has images of shape {images.shape[1:]}, "
            f"config expects ({cfg.image_size}, {cfg.image_size}, {cfg.channels})"
        )
    if len(np.unique(labels)) != cfg.n_classes:
        raise ValueError(f"dataset.n_classes: the source has {len(np.unique(labels))} classes, config says {cfg.n_classes}")
    split = stratified_split(labels, cfg.test_fraction, cfg.val_fraction, cfg.split_seed)
    arrays = {}  # path -> array, in write order
    for name in paths.DATA_SPLITS:
        image_file, label_file = split_files(cfg.name, name, out_dir)
        arrays[image_file], arrays[label_file] = images[split[name]], labels[split[name]]
    manifest = manifest_file(cfg.name, out_dir)
    begin_writing(manifest, {path: io.npy_size(a.shape, a.dtype) for path, a in arrays.items()})
    for path, array in arrays.items():
        io.write_array(path, array)
    written = list(arrays)
    counts = {name: int(len(split[name])) for name in paths.DATA_SPLITS}
    io.write_manifest(  # last: it records the checksums of the arrays just written
        manifest,
        cfg.name,
        written,
        {"counts": counts, "n_classes": cfg.n_classes, "image_shape": list(images.shape[1:]),
         "split_seed": cfg.split_seed, "test_fraction": cfg.test_fraction, "val_fraction": cfg.val_fraction},
    )
    return counts


def limit(raw, cfg: DatasetConfig):
    """Smoke-run cuts: the first ``max_classes`` classes, the first N images per class of each set."""
    from ncil.data.images import RawDataset, first_per_class

    train, test, classes = raw.train, raw.test, list(raw.classes)
    if cfg.max_classes:
        if cfg.max_classes > len(classes):
            raise ConfigError(f"dataset.max_classes: the source has only {len(classes)} classes, got {cfg.max_classes}")
        classes = classes[: cfg.max_classes]
        train = train.subset(np.flatnonzero(train.labels < cfg.max_classes))
        test = test.subset(np.flatnonzero(test.labels < cfg.max_classes)) if test is not None else None
    train = train.subset(first_per_class(train.labels, cfg.max_train_per_class))
    if test is not None:
        test = test.subset(first_per_class(test.labels, cfg.max_test_per_class))
    return RawDataset(classes, train, test, raw.source)


def image_blocks(part, shape: tuple, source: str, image_file: str):
    """The images of ``part`` (an ``ImageSet``) decoded ``CHUNK`` rows at a time, each block checked to be
    uint8 of ``shape`` (a ConfigError naming ``image_file`` otherwise)."""
    n = len(part.labels)
    for start in range(0, n, CHUNK):
        block = part.load(np.arange(start, min(start + CHUNK, n)))
        if block.shape[1:] != shape or block.dtype != np.uint8:
            raise ConfigError(shape_message(source, block.shape[1:], image_file, shape))
        yield block


def prepare_raw(cfg: DatasetConfig, out_dir: str | None = None) -> dict:
    """A data set read from ``cfg.root``: the real test set as test, val carved from train by a seed.

    Images are decoded and written in blocks of ``CHUNK`` (uint8, (N, image_size, image_size, C)).
    """
    raw = limit(_raw_loaders()[cfg.name](cfg), cfg)
    if len(raw.classes) != cfg.n_classes:
        raise ConfigError(
            f"dataset.n_classes: {raw.source} has {len(raw.classes)} classes"
            f"{' (after max_classes)' if cfg.max_classes else ''}, config says {cfg.n_classes}"
        )
    if raw.test is None:
        rows = stratified_split(raw.train.labels, cfg.test_fraction, cfg.val_fraction, cfg.split_seed)
        parts = {name: raw.train.subset(rows[name]) for name in paths.DATA_SPLITS}
    else:
        rows = stratified_split(raw.train.labels, 0.0, cfg.val_fraction, cfg.split_seed)
        parts = {"train": raw.train.subset(rows["train"]), "val": raw.train.subset(rows["val"]), "test": raw.test}
    missing = sorted(set(range(cfg.n_classes)) - set(parts["train"].labels.tolist()))
    if missing:
        raise ConfigError(f"dataset: classes {[raw.classes[c] for c in missing[:5]]} have no training images left")
    shape = (cfg.image_size, cfg.image_size, cfg.channels)
    # Every image decoded and checked now, before the old prepared data is touched: a broken, unreadable
    # or wrongly sized image (the first or the last) deletes nothing. The writing below decodes them again:
    # twice the decoding time, rather than the disk room of a second copy of the arrays.
    for name in paths.DATA_SPLITS:
        for _ in image_blocks(parts[name], shape, raw.source, split_files(cfg.name, name, out_dir)[0]):
            pass
    manifest = manifest_file(cfg.name, out_dir)
    sizes = {}
    for name in paths.DATA_SPLITS:
        image_file, label_file = split_files(cfg.name, name, out_dir)
        n = len(parts[name].labels)
        sizes[image_file], sizes[label_file] = io.npy_size((n, *shape), np.uint8), io.npy_size((n,), np.int64)
    begin_writing(manifest, sizes)
    written, counts = [], {}
    for name in paths.DATA_SPLITS:
        image_file, label_file = split_files(cfg.name, name, out_dir)
        part = parts[name]
        n = len(part.labels)
        io.write_array_chunks(image_file, (n, *shape), np.uint8, image_blocks(part, shape, raw.source, image_file))
        io.write_array(label_file, part.labels.astype(np.int64))
        written += [image_file, label_file]
        counts[name] = int(n)
    io.write_manifest(  # last: it records the checksums of the arrays just written
        manifest,
        cfg.name,
        written,
        {"counts": counts, "n_classes": cfg.n_classes, "image_shape": list(shape),
         "split_seed": cfg.split_seed, "test_fraction": 0.0 if raw.test is not None else cfg.test_fraction,
         "val_fraction": cfg.val_fraction, "classes": list(raw.classes),
         "test_set": "the data set's own test set" if raw.test is not None else "held out from train",
         "train_resize": cfg.train_resize, "test_resize": cfg.test_resize,
         "limits": {"max_classes": cfg.max_classes, "max_train_per_class": cfg.max_train_per_class,
                    "max_test_per_class": cfg.max_test_per_class}},
    )
    return counts
