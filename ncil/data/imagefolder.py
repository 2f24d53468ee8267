"""Class-folder trees: a generic image folder and ImageNet-Subset.

Generic folder (``dataset=folder dataset.root=PATH``)::

    PATH/train/<class>/<image>      training images (val is carved from them by dataset.split_seed)
    PATH/test/<class>/<image>       test images, the same class folders

ImageNet-Subset (``dataset=imagenet_subset``): an ImageNet tree ``train/<wnid>/*.JPEG`` and
``val/<wnid>/*.JPEG`` (the validation set sorted into class folders, used as the test set) of which
the 100 classes listed in ``dataset.class_list`` are kept. Class names are sorted to give the
original labels 0..N-1 (ImageFolder order, method-spec 1.2).
"""

from __future__ import annotations

from pathlib import Path

from ncil.data.images import RawDataset, class_tree, file_set
from ncil.pipeline.config import DatasetConfig
from ncil.pipeline.io import ArtifactError


def _tree(root: Path, train: str, test: str, classes: list[str], cfg: DatasetConfig) -> RawDataset:
    train_files, train_labels = class_tree(root / train, classes, f"training set ({train}/)")
    test_files, test_labels = class_tree(root / test, classes, f"test set ({test}/)")
    size, ch = cfg.image_size, cfg.channels
    return RawDataset(
        classes,
        file_set(train_files, train_labels, size, ch, cfg.train_resize),
        file_set(test_files, test_labels, size, ch, cfg.test_resize),
        str(root),
    )


def load_folder(cfg: DatasetConfig) -> RawDataset:
    root = Path(cfg.root)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise ArtifactError(
                f"{root / split}: image folder not found (expected {root}/train/<class>/ and {root}/test/<class>/ "
                f"holding image files); set dataset.root=PATH to such a folder"
            )
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    if classes != test_classes:
        extra = sorted(set(classes) ^ set(test_classes))
        raise ArtifactError(f"{root}: train/ and test/ must have the same class folders; differing: {extra[:10]}")
    return _tree(root, "train", "test", classes, cfg)


def read_class_list(path: Path) -> list[str]:
    """Class folder names, one a line; ``#`` starts a comment."""
    if not path.is_file():
        raise ArtifactError(f"{path}: dataset.class_list: file not found (class folder names, one a line)")
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        raise ArtifactError(f"{path}: duplicate class names")
    return names


def imagenet_missing_message(root: Path) -> str:
    return (
        f"{root}: ImageNet not found (expected {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG, the "
        f"ILSVRC2012 training set and its validation set sorted into class folders; a folder holding only the "
        f"100 classes, such as seed_1993_subset_100_imagenet/data, works too). ImageNet needs an account at "
        f"https://image-net.org; put or link the tree there, or point dataset.root at it "
        f"(python -m ncil grid imagenet_subset dataset.root=PATH)"
    )


def load_imagenet_subset(cfg: DatasetConfig) -> RawDataset:
    root = Path(cfg.root)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise ArtifactError(imagenet_missing_message(root))
    listed = read_class_list(Path(cfg.class_list)) if cfg.class_list else []
    if listed:
        classes = sorted(listed)
    else:  # no list: the tree must hold exactly the subset's classes (e.g. seed_1993_subset_100_imagenet)
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if len(classes) != cfg.n_classes:
            raise ArtifactError(
                f"{cfg.class_list or 'dataset.class_list'}: no class names listed, and {root / 'train'} has "
                f"{len(classes)} class folders instead of the subset's {cfg.n_classes}: list the subset's wnids "
                f"in the class-list file, or point dataset.root at a tree holding only the subset"
            )
    return _tree(root, "train", "val", classes, cfg)
