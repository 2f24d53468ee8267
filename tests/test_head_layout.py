"""Head column layout of the `official` preset (method-spec 2.5, 3.4, fixtures 10.2, 10.3, 10.7)."""

import pytest
import torch

from ncil.methods.head_layout import HeadLayout, take_columns


@pytest.mark.parametrize(
    "n_old, n_new, expected",
    [
        (0, 50, 200 + 1225),  # task 0 of 50+10x5 -> 1425
        (90, 10, 400 + 45),  # last task of 50+10x5 -> 445
        (0, 40, 160 + 780),  # task 0 of 40+3x20 -> 940
        (95, 5, 400 + 10),  # end of 50+5x10 -> 410
        (97, 3, 400 + 3),  # end of 40+3x20
    ],
)
def test_spec_head_sizes(n_old, n_new, expected):
    assert HeadLayout(n_old, n_new).n_outputs == expected


def test_spec_examples_literal():
    assert HeadLayout(0, 50).n_outputs == 1425
    assert HeadLayout(90, 10).n_outputs == 445
    assert HeadLayout(0, 40).n_outputs == 940
    assert HeadLayout(95, 5).n_outputs == 410


def test_tiny_layout_column_by_column():
    # K_old = 1 (class 0), C_t = 3 (classes 1, 2, 3), 4 rotations: K_tot = 4, 16 real + 3 pair columns = 19.
    #   col  0..3  class 0 rot 0..3     col  4..7  class 1 rot 0..3
    #   col  8..11 class 2 rot 0..3     col 12..15 class 3 rot 0..3
    #   col 16 pair (local 1, 0) = classes (2, 1): 16 + 1*0/2 + 0
    #   col 17 pair (local 2, 0) = classes (3, 1): 16 + 2*1/2 + 0
    #   col 18 pair (local 2, 1) = classes (3, 2): 16 + 2*1/2 + 1
    lay = HeadLayout(1, 3)
    assert (lay.n_total, lay.n_real, lay.n_mixup, lay.n_outputs) == (4, 16, 3, 19)
    assert list(lay.class_columns(0)) == [0, 1, 2, 3]
    assert list(lay.class_columns(2)) == [8, 9, 10, 11]
    assert list(lay.class_columns(3)) == [12, 13, 14, 15]
    assert list(lay.eval_columns) == [0, 4, 8, 12]
    assert list(lay.old_rotation0_columns) == [0]
    assert list(lay.real_columns) == list(range(16))
    assert list(lay.mixup_columns) == [16, 17, 18]
    assert list(lay.rows_kept_on_growth) == [0, 1, 2, 3]
    assert lay.virtual_label(2, 1) == lay.virtual_label(1, 2) == 16
    assert lay.virtual_label(3, 1) == 17
    assert lay.virtual_label(1, 3) == 17
    assert lay.virtual_label(3, 2) == 18
    # Every column is used exactly once: real columns of the 4 classes, then the 3 pairs.
    used = [c for k in range(4) for c in lay.class_columns(k)] + [lay.virtual_label(a, b) for a in (2, 3) for b in range(1, a)]
    assert sorted(used) == list(range(lay.n_outputs))


def test_virtual_label_spec_fixture_and_tensor_form():
    lay = HeadLayout(50, 10)
    assert lay.virtual_label(59, 50) == 4 * 60 + 36 + 0 == 276  # fixture 10.7
    y1 = torch.tensor([59, 50, 51, 58])
    y2 = torch.tensor([50, 59, 50, 57])
    # (59,50): a=9,b=0 -> 240+36+0; (51,50): a=1,b=0 -> 240; (58,57): a=8,b=7 -> 240+28+7 = 275.
    assert lay.virtual_labels(y1, y2).tolist() == [276, 276, 240, 275]
    assert lay.virtual_labels(y1, y2).dtype == torch.int64


def test_virtual_labels_fill_mixup_columns_exactly():
    lay = HeadLayout(7, 6)
    pairs = [(a, b) for a in range(7, 13) for b in range(7, a)]
    labels = [lay.virtual_label(a, b) for a, b in pairs]
    assert sorted(labels) == list(lay.mixup_columns) == list(range(52, 52 + 15))


def test_old_rotation0_and_growth_rows_for_a_real_task():
    lay = HeadLayout(50, 10)
    assert list(lay.old_rotation0_columns) == list(range(0, 200, 4))
    assert list(lay.rows_kept_on_growth) == list(range(200))  # the task-0 head had 200 real + 1225 mixup rows
    assert list(lay.eval_columns) == list(range(0, 240, 4))
    assert list(lay.mixup_columns) == list(range(240, 285))
    assert HeadLayout(0, 50).next(10) == lay


def test_no_mixup_and_one_rotation():
    lay = HeadLayout(2, 3, rotations=1, mixup=False)
    assert lay.n_outputs == 5
    assert list(lay.eval_columns) == list(lay.real_columns) == [0, 1, 2, 3, 4]
    assert list(lay.mixup_columns) == []
    assert list(lay.old_rotation0_columns) == [0, 1]
    with pytest.raises(ValueError, match="mixup=True"):
        lay.virtual_label(3, 4)


def test_task0_has_no_old_columns():
    lay = HeadLayout(0, 5)
    assert list(lay.old_rotation0_columns) == []
    assert list(lay.rows_kept_on_growth) == []


def test_take_columns_is_the_spec_eval_slice():
    lay = HeadLayout(1, 3)
    logits = torch.arange(2 * 19, dtype=torch.float32).reshape(2, 19)
    # The spec's eval slice [:, :4K][:, ::4] (fixture 10.3).
    assert torch.equal(take_columns(logits, lay.eval_columns), logits[:, :16][:, ::4])
    assert take_columns(logits, lay.eval_columns)[0].tolist() == [0.0, 4.0, 8.0, 12.0]
    assert take_columns(logits, lay.mixup_columns)[1].tolist() == [35.0, 36.0, 37.0]
    with pytest.raises(ValueError, match="do not fit"):
        take_columns(logits[:, :10], lay.eval_columns)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_old=-1, n_new=3), "n_old"),
        (dict(n_old=0, n_new=0), "n_new"),
        (dict(n_old=0, n_new=2, rotations=0), "rotations"),
        (dict(n_old=0.5, n_new=2), "n_old"),
    ],
)
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HeadLayout(**kwargs)


def test_virtual_label_rejects_old_or_equal_classes():
    lay = HeadLayout(2, 3)
    with pytest.raises(ValueError, match="current-task"):
        lay.virtual_label(1, 3)
    with pytest.raises(ValueError, match="different"):
        lay.virtual_label(3, 3)
    with pytest.raises(ValueError, match="different"):
        lay.virtual_labels(torch.tensor([2, 3]), torch.tensor([3, 3]))
