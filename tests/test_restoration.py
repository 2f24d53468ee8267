"""Prototype Restoration (paper Eq. 4-5) and PASS protoAug helpers, on hand-computed tensors."""

import math

import pytest
import torch

from ncil.methods.prototypes import (
    augment_prototypes,
    class_centers,
    class_offsets,
    gaussian_radius,
    global_radius,
    offset_loss,
    restore_prototypes,
    split_halves,
)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_restore_at_zero_offset_returns_old_center_exactly():
    g = torch.Generator().manual_seed(0)
    old, feats = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert torch.equal(restore_prototypes(old, feats, feats.clone()), old)


def test_restore_by_hand():
    # Eq. 5: mu_old + (F(x) - mu_y): (10, 20) + ((3, 5) - (1, 1)) = (12, 24); (0, 0) + ((1, 1) - (2, -2)) = (-1, 3).
    old = t([[10.0, 20.0], [0.0, 0.0]])
    feats = t([[3.0, 5.0], [1.0, 1.0]])
    own = t([[1.0, 1.0], [2.0, -2.0]])
    assert restore_prototypes(old, feats, own).tolist() == [[12.0, 24.0], [-1.0, 3.0]]


def test_class_offsets_by_hand():
    # Eq. 4: O = F(x) - mu_y.
    feats = t([[3.0, 5.0], [0.0, 0.0]])
    centers = t([[1.0, 1.0], [2.0, -2.0]])
    assert class_offsets(feats, centers).tolist() == [[2.0, 4.0], [-2.0, 2.0]]


def test_offsets_against_class_centers_sum_to_zero_per_class():
    feats = t([[1.0, 2.0], [3.0, 6.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1])
    classes, centers = class_centers(feats, labels)
    offsets = class_offsets(feats, centers[labels])
    assert offsets.tolist() == [[-1.0, -2.0], [1.0, 2.0], [0.0, 0.0]]


def test_offset_loss_zero_for_equal_offsets():
    o = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    assert offset_loss(o, o.clone()).item() == 0.0


def test_offset_loss_by_hand():
    s = t([[1.0, 2.0], [3.0, 4.0]])
    o = t([[1.0, 0.0], [0.0, 4.0]])
    # Pair 0: diff (0, 2) -> MSE (0 + 4)/2 = 2; pair 1: diff (3, 0) -> MSE (9 + 0)/2 = 4.5; mean over pairs 3.25.
    assert offset_loss(s, o).item() == pytest.approx(3.25)
    # Released code: the same element mean divided by D = 2 again.
    assert offset_loss(s, o, reduction="code").item() == pytest.approx(1.625)
    with pytest.raises(ValueError, match="reduction"):
        offset_loss(s, o, reduction="sum")


def test_offset_loss_rejects_unpaired_shapes():
    with pytest.raises(ValueError, match="student_offsets"):
        offset_loss(torch.zeros(3, 2), torch.zeros(2, 2))


@pytest.mark.parametrize("n", [10, 7, 2, 1])
def test_split_halves_are_disjoint_and_cover_two_halves(n):
    idx1, idx2 = split_halves(n, torch.Generator().manual_seed(0))
    assert len(idx1) == len(idx2) == n // 2
    both = torch.cat([idx1, idx2]).tolist()
    assert len(set(both)) == 2 * (n // 2)  # disjoint, 2 * (n // 2) distinct rows
    assert set(both) <= set(range(n))


def test_split_halves_deterministic_given_the_generator():
    a = split_halves(64, torch.Generator().manual_seed(123))
    b = split_halves(64, torch.Generator().manual_seed(123))
    c = split_halves(64, torch.Generator().manual_seed(124))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].tolist() != list(range(32))  # random, not the trivial first/second half


def test_split_halves_sorted_option_keeps_the_same_sets():
    a = split_halves(20, torch.Generator().manual_seed(5))
    s = split_halves(20, torch.Generator().manual_seed(5), sort=True)
    assert s[0].tolist() == sorted(a[0].tolist()) and s[1].tolist() == sorted(a[1].tolist())


def test_gaussian_radius_by_hand():
    # Rows (1, 0), (2, 0), (3, 3): unbiased variances 1 and (1 + 1 + 4)/2 = 3 -> trace 4, / D = 2 -> 2.
    assert gaussian_radius(t([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]])).item() == pytest.approx(2.0)
    # Rows (0, 0), (2, 4): variances 2 and 8 (biased would be 1 and 4) -> 10 / 2 = 5.
    assert gaussian_radius(t([[0.0, 0.0], [2.0, 4.0]])).item() == pytest.approx(5.0)


def test_gaussian_radius_is_trace_of_unbiased_covariance_over_d():
    x = torch.randn(30, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = torch.trace(torch.cov(x.T)) / 7
    assert gaussian_radius(x).item() == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(ValueError, match="features"):
        gaussian_radius(x[:1])


def test_global_radius_is_sqrt_of_mean_contribution():
    assert global_radius(t([2.0, 8.0])).item() == pytest.approx(math.sqrt(5.0))


def test_augment_prototypes_deterministic_and_exact_at_radius_zero():
    centers = t([[0.0, 0.0], [10.0, 10.0], [-5.0, 5.0]])
    ids = torch.tensor([2, 0, 2, 1])
    assert torch.equal(augment_prototypes(centers, ids, 0.0, torch.Generator().manual_seed(0)), centers[ids])
    a = augment_prototypes(centers, ids, 1.5, torch.Generator().manual_seed(7))
    b = augment_prototypes(centers, ids, 1.5, torch.Generator().manual_seed(7))
    assert a.shape == (4, 2) and torch.equal(a, b)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.allclose(a, centers[ids] + 1.5 * noise)
    assert not torch.equal(a, centers[ids])
