"""TinyImageNet from the standard ``tiny-imagenet-200/`` tree.

    wnids.txt                          200 WordNet ids, one a line
    train/<wnid>/images/*.JPEG         500 training images per class (64x64)
    val/images/*.JPEG                  10,000 validation images, used as the test set
    val/val_annotations.txt            <file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1> per validation image

Original labels are the sorted wnids (torchvision ImageFolder order, method-spec 1.2); the
validation images take their labels from ``val_annotations.txt`` through the same table.
"""

from __future__ import annotations

from pathlib import Path

from ncil.data.images import RawDataset, file_set, image_files
from ncil.pipeline.config import DatasetConfig
from ncil.pipeline.io import ArtifactError

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def missing_message(root: Path) -> str:
    return (
        f"{root}: TinyImageNet not found (expected the folder tiny-imagenet-200/ with wnids.txt, "
        f"train/<wnid>/images/ and val/images/ + val/val_annotations.txt). Fetch it with "
        f"curl -O {URL} && unzip tiny-imagenet-200.zip -d {root.parent}, or point dataset.root at it "
        f"(python -m ncil grid tinyimagenet dataset.root=PATH)"
    )


def load(cfg: DatasetConfig) -> RawDataset:
    root = Path(cfg.root)
    if not root.is_dir():
        raise ArtifactError(missing_message(root))
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise ArtifactError(f"{wnids_file}: missing from the TinyImageNet folder (one WordNet id a line)")
    classes = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    index = {wnid: i for i, wnid in enumerate(classes)}

    train_files, train_labels = [], []
    for wnid in classes:
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise ArtifactError(f"{folder}: training images of class {wnid} (listed in wnids.txt) missing")
        found = image_files(folder)
        train_files += found
        train_labels += [index[wnid]] * len(found)

    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise ArtifactError(f"{annotations}: missing (the labels of the validation images, used as the test set)")
    test_files, test_labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ArtifactError(f"{annotations}: line {number}: expected <file>\\t<wnid from wnids.txt>..., got {line!r}")
        path = root / "val" / "images" / fields[0]
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in {annotations} (line {number}) but missing")
        test_files.append(path)
        test_labels.append(index[fields[1]])
    order = sorted(range(len(test_files)), key=lambda i: test_files[i].name)  # file-name order, stable
    test_files, test_labels = [test_files[i] for i in order], [test_labels[i] for i in order]

    size, ch = cfg.image_size, cfg.channels
    return RawDataset(
        classes,
        file_set(train_files, train_labels, size, ch, cfg.train_resize),
        file_set(test_files, test_labels, size, ch, cfg.test_resize),
        str(root),
    )
