"""PASS baseline pieces: rotation labels, rotation-0 evaluation slice, Frobenius feature KD."""

import math

import pytest
import torch

from ncil.methods.baseline import feature_distillation, rotate_batch, rotation0_logits


def test_rotation_ordering_is_sample_major():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    y = torch.tensor([5, 7])
    x4, y4 = rotate_batch(x, y)
    assert x4.shape == (8, 1, 3, 3)
    assert y4.tolist() == [20, 21, 22, 23, 28, 29, 30, 31]  # 4 y_i + k
    for i in range(2):
        for k in range(4):
            assert torch.equal(x4[4 * i + k], torch.rot90(x[i], k, dims=(1, 2)))
    # By hand: sample 0 = [[0,1,2],[3,4,5],[6,7,8]]; one 90-degree turn (rot90 convention) -> [[2,5,8],[1,4,7],[0,3,6]].
    assert x4[1, 0].tolist() == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]
    assert torch.equal(x4[4], x[1])  # row 4*1 + 0 is sample 1 unrotated
    assert x4[2, 0].tolist() == [[8, 7, 6], [5, 4, 3], [2, 1, 0]]


def test_rotation_rejects_non_square_images():
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(1, 1, 2, 3), torch.tensor([0]))


def test_rotation0_logits_recovers_k_columns():
    logits = torch.arange(2 * 12, dtype=torch.float32).reshape(2, 12)  # K = 3 classes x 4 rotations
    out = rotation0_logits(logits)
    assert out.shape == (2, 3)
    assert out.tolist() == [[0.0, 4.0, 8.0], [12.0, 16.0, 20.0]]
    # A head that fires on column 4y (class y, rotation 0) predicts y after slicing.
    y = torch.tensor([2, 0, 1])
    onehot = torch.nn.functional.one_hot(4 * y, 12).float()
    assert rotation0_logits(onehot).argmax(1).tolist() == y.tolist()
    with pytest.raises(ValueError, match="4K"):
        rotation0_logits(torch.zeros(2, 10))


def test_feature_distillation_hand_value_is_frobenius_not_mean():
    s = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    # sqrt(9 + 16) = 5 (a per-sample mean of L2 norms would give 3.5, an MSE 6.25).
    assert feature_distillation(s, torch.zeros(2, 2)).item() == pytest.approx(5.0)


def test_feature_distillation_duplicated_batch_scales_by_sqrt2():
    g = torch.Generator().manual_seed(0)
    s, te = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    single = feature_distillation(s, te)
    doubled = feature_distillation(torch.cat([s, s]), torch.cat([te, te]))
    assert doubled.item() == pytest.approx(math.sqrt(2) * single.item(), rel=1e-6)
    assert feature_distillation(s, s.clone()).item() == 0.0
    with pytest.raises(ValueError, match="student"):
        feature_distillation(s, te[:4])
