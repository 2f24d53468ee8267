"""Patch-level Knowledge Selection (paper Eq. 2-3), on hand-computed tensors."""

import math

import pytest
import torch

from ncil.methods.pks import patch_weights, pks_loss, pks_loss_code


def t(values):
    return torch.tensor(values, dtype=torch.float64)


# A 4-patch row: CLS at the origin, patches at L2 distances 3, 1, 4, 2.
CLS4 = t([[0.0, 0.0]])
PATCHES4 = t([[[3.0, 0.0], [0.0, 1.0], [0.0, -4.0], [-2.0, 0.0]]])

# Hand example of Eq. 3: B = 2 samples, N = 3 patches, D = 2 (3-4-5 style triangles).
# Sample 0: CLS (0, 0); patches (3, 4), (8, 6), (7, 24) at distances 5, 10, 25 -> w = 5/5, 5/10, 5/25 = 1, 0.5, 0.2.
# Sample 1: CLS (1, 1); patches (1, 3), (5, 4), (-5, 9), offsets (0, 2), (4, 3), (-6, 8) at distances
#           2, 5, 10 -> w = 1, 0.4, 0.2.
S_CLS = t([[0.0, 0.0], [1.0, 1.0]])
S_PATCHES = t([[[3.0, 4.0], [8.0, 6.0], [7.0, 24.0]], [[1.0, 3.0], [5.0, 4.0], [-5.0, 9.0]]])
# Student minus teacher per patch: sample 0 (3, 4), (0, 2), (6, 8) -> D = 5, 2, 10;
#                                  sample 1 (0, 0), (5, 12), (-3, 4) -> D = 0, 13, 5.
DELTAS = t([[[3.0, 4.0], [0.0, 2.0], [6.0, 8.0]], [[0.0, 0.0], [5.0, 12.0], [-3.0, 4.0]]])
T_PATCHES = S_PATCHES - DELTAS
# Teacher CLS: sample 0 (3, -4) -> ||(0,0) - (3,-4)|| = 5; sample 1 (1, 0) -> ||(1,1) - (1,0)|| = 1.
T_CLS = t([[3.0, -4.0], [1.0, 0.0]])
# Eq. 3, sample 0: 1*5 + 0.5*2 + 0.2*10 + 5 = 13; sample 1: 1*0 + 0.4*13 + 0.2*5 + 1 = 7.2; batch mean = 10.1.
# (Weights from the teacher's tokens would give a different number: they must come from the student.)
PAPER_VALUE = 10.1


def test_inverse_weights_in_unit_interval_max_exactly_one_and_decreasing_with_distance():
    w = patch_weights(CLS4, PATCHES4)
    # 1/(d + eps) normalised by the max: d = 3, 1, 4, 2 -> 1/3, 1, 1/4, 1/2.
    assert w.shape == (1, 4)
    assert w[0].tolist() == pytest.approx([1 / 3, 1.0, 0.25, 0.5], rel=1e-7)
    assert w.max().item() == 1.0  # exactly
    assert bool((w > 0).all()) and bool((w <= 1).all())
    distances = torch.tensor([3.0, 1.0, 4.0, 2.0])
    assert torch.argsort(w[0], descending=True).tolist() == torch.argsort(distances).tolist() == [1, 3, 0, 2]


def test_inverse_weights_max_is_exactly_one_per_row_on_random_tokens():
    g = torch.Generator().manual_seed(0)
    cls, patches = torch.randn(5, 8, generator=g), torch.randn(5, 16, 8, generator=g)
    w = patch_weights(cls, patches)
    assert w.shape == (5, 16)
    assert torch.equal(w.amax(dim=1), torch.ones(5))
    assert bool((w > 0).all()) and bool((w <= 1).all())


def test_uniform_weights_are_ones():
    w = patch_weights(CLS4, PATCHES4, weighting="uniform")
    assert torch.equal(w, torch.ones(1, 4, dtype=torch.float64))


def test_direct_weights_increase_with_distance_and_max_one():
    w = patch_weights(CLS4, PATCHES4, weighting="direct")
    # distance / max distance: 3/4, 1/4, 4/4, 2/4.
    assert w[0].tolist() == pytest.approx([0.75, 0.25, 1.0, 0.5])
    assert w.max().item() == 1.0
    assert torch.argsort(w[0]).tolist() == [1, 3, 0, 2]


def test_l1_and_l2_distances_give_different_weights():
    cls = t([[0.0, 0.0]])
    patches = t([[[1.0, 1.0], [2.0, 0.0]]])
    # L2: sqrt(2), 2 -> w = 1, sqrt(2)/2.  L1: 2, 2 -> w = 1, 1.
    assert patch_weights(cls, patches, p=2)[0].tolist() == pytest.approx([1.0, math.sqrt(2) / 2], rel=1e-7)
    assert patch_weights(cls, patches, p=1)[0].tolist() == pytest.approx([1.0, 1.0], rel=1e-7)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"weighting": "softmax"}, "weighting"), ({"p": 3}, "p"), ({"eps": -1.0}, "eps")],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        patch_weights(CLS4, PATCHES4, **kwargs)


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match="patches"):
        patch_weights(CLS4, PATCHES4[0])
    with pytest.raises(ValueError, match="reduction"):
        pks_loss(S_CLS, S_PATCHES, T_CLS, T_PATCHES, reduction="sum")


def test_loss_is_zero_when_student_equals_teacher():
    g = torch.Generator().manual_seed(1)
    cls, patches = torch.randn(3, 6, generator=g), torch.randn(3, 10, 6, generator=g)
    assert pks_loss(cls, patches, cls.clone(), patches.clone()).item() == 0.0
    assert pks_loss_code(cls, patches, patches.clone()).item() == 0.0


def test_paper_loss_on_hand_example():
    assert pks_loss(S_CLS, S_PATCHES, T_CLS, T_PATCHES).item() == pytest.approx(PAPER_VALUE, rel=1e-7)


def test_table5_weightings_on_hand_example():
    # uniform: sample 0: 5 + 2 + 10 + 5 = 22; sample 1: 0 + 13 + 5 + 1 = 19; mean 20.5.
    assert pks_loss(S_CLS, S_PATCHES, T_CLS, T_PATCHES, weighting="uniform").item() == pytest.approx(20.5)
    # direct: sample 0 w = 5/25, 10/25, 1 -> 1 + 0.8 + 10 + 5 = 16.8;
    #         sample 1 w = 2/10, 5/10, 1 -> 0 + 6.5 + 5 + 1 = 12.5; mean 14.65.
    assert pks_loss(S_CLS, S_PATCHES, T_CLS, T_PATCHES, weighting="direct").item() == pytest.approx(14.65)


def test_gradient_flows_through_the_weights_unless_detached():
    # Teacher CLS = student CLS: the CLS term is ||0|| (zero gradient), so any gradient on the student CLS
    # comes only through the weights w(cls, patches).
    for detach, expect_nonzero in ((False, True), (True, False)):
        cls = S_CLS.clone().requires_grad_(True)
        pks_loss(cls, S_PATCHES, S_CLS.clone(), T_PATCHES, detach_weights=detach).backward()
        assert bool((cls.grad != 0).any()) is expect_nonzero


def test_detached_weights_leave_only_the_cls_term_gradient():
    # With detached weights, d/d cls of mean_b ||cls_b - tcls_b|| is (cls_b - tcls_b) / ||.|| / B:
    # sample 0: (-3, 4)/5/2 = (-0.3, 0.4); sample 1: (0, 1)/1/2 = (0, 0.5).
    cls = S_CLS.clone().requires_grad_(True)
    pks_loss(cls, S_PATCHES, T_CLS, T_PATCHES, detach_weights=True).backward()
    assert cls.grad.tolist() == [pytest.approx([-0.3, 0.4]), pytest.approx([0.0, 0.5])]
    cls2 = S_CLS.clone().requires_grad_(True)
    pks_loss(cls2, S_PATCHES, T_CLS, T_PATCHES).backward()
    assert not torch.allclose(cls2.grad, cls.grad)


# Code form (method-spec 4.6 [code]) on B = 2, N = 2, D = 2.
# Sample 0: CLS (0, 0); patches (1, 1), (4, 0): L1 distances 2, 4 -> w = 1, 0.5 (L2: sqrt(2), 4 -> w = 1, sqrt(2)/4).
# Sample 1: CLS (1, 1); patches (1, 2), (3, 1): L1 distances 1, 2 -> w = 1, 0.5.
C_CLS = t([[0.0, 0.0], [1.0, 1.0]])
C_PATCHES = t([[[1.0, 1.0], [4.0, 0.0]], [[1.0, 2.0], [3.0, 1.0]]])
# D: sample 0 deltas (3, 4), (0, 2) -> 5, 2; sample 1 deltas (0, 0), (6, 8) -> 0, 10.
C_TEACHER = C_PATCHES - t([[[3.0, 4.0], [0.0, 2.0]], [[0.0, 0.0], [6.0, 8.0]]])


def test_code_form_reduction_on_hand_example():
    # sum w*D = (1*5 + 0.5*2) + (1*0 + 0.5*10) = 11; mean over B*N = 4 -> 2.75; divided by N = 2 again -> 1.375.
    assert pks_loss_code(C_CLS, C_PATCHES, C_TEACHER).item() == pytest.approx(1.375, rel=1e-7)
    # With L2 weights: (5 + (sqrt(2)/4)*2 + 0 + 5) / 4 / 2.
    l2_value = (10 + math.sqrt(2) / 2) / 8
    assert pks_loss_code(C_CLS, C_PATCHES, C_TEACHER, p=2).item() == pytest.approx(l2_value, rel=1e-7)


def test_code_reduction_keyword_matches_and_ignores_teacher_cls():
    a = pks_loss(C_CLS, C_PATCHES, C_CLS + 7.0, C_TEACHER, p=1, reduction="code")
    b = pks_loss(C_CLS, C_PATCHES, C_CLS - 3.0, C_TEACHER, p=1, reduction="code")
    assert a.item() == b.item() == pytest.approx(1.375, rel=1e-7)
