"""What the configuration can know about a data set before its files are read (stdlib only).

Two facts live here, each in one place:

* ``DATASETS``: per data set name, its number of classes (``None``: read from the folder at prepare
  time, as for ``folder``), the image count of its smallest class in the pool that validation (and,
  without a test set of its own, test) images are carved from (``None``: unknown before prepare),
  whether it brings its own test set and whether it is read from raw files under ``dataset.root``.
  ``ncil.pipeline.config`` checks ``params.yaml`` against them;
  ``ncil.data.preparation`` checks the files against the configuration.
* ``class_split_counts``: how many of one class's images go to train, val and test (the rounding
  of ``ncil.data.preparation.stratified_split``).
"""

from __future__ import annotations

from typing import NamedTuple


class DatasetFacts(NamedTuple):
    n_classes: int | None  # classes of the full data set; None: the folder's class count (prepare checks it)
    smallest_class: int | None  # images of the smallest class before val/test are carved out; None: unknown
    own_test_set: bool  # the test split is the data set's own (dataset.test_fraction is then unused)
    raw: bool  # read from dataset.root by its source module (the max_* smoke cuts apply); else bundled


DATASETS = {
    "digits": DatasetFacts(10, 174, False, False),  # scikit-learn's 1,797 digits: 174 (class 8) .. 183 per class
    "cifar100": DatasetFacts(100, 500, True, True),  # 500 training / 100 test images per class
    "tinyimagenet": DatasetFacts(200, 500, True, True),  # 500 training images per class, val (50 a class) as test
    "imagenet_subset": DatasetFacts(100, None, True, True),  # 100 ImageNet classes (732..1300 training images each)
    "folder": DatasetFacts(None, None, True, True),  # your own train/<class>/ and test/<class>/ tree
}


def class_split_counts(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) images of a class of ``n``: ``round(n * test)`` to test, then
    ``round(rest * val)`` of the rest to val (Python's round: halves to even), the others to train."""
    n_test = int(round(n * test_fraction))
    n_val = int(round((n - n_test) * val_fraction))
    return n - n_test - n_val, n_val, n_test
