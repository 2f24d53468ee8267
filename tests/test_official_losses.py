"""Loss terms of the `official` preset (method-spec 2.4, 4.2-4.8, 5.4), on hand-computed tensors."""

import math

import pytest
import torch
from torch import nn

from ncil.methods.contrastive import CONTRAST_TEMPERATURE, contrastive_keys, supervised_contrastive
from ncil.methods.head_layout import HeadLayout
from ncil.methods.mixup import (
    MIXUP_ALPHA,
    MIXUP_CLAMP,
    MIXUP_FALLBACK,
    MIXUP_ROUNDS,
    beta_symmetric,
    clamp_lambdas,
    mix_round,
    mixup_batch,
)
from ncil.methods.official import (
    PR_RESTORE_WEIGHT,
    class_statistics,
    classification_loss,
    identity_transfer,
    map_prototypes,
    offset_loss_official,
    pks_official,
    pr_centers_official,
    pr_offsets,
    pr_split_official,
    proto_aug_loss,
    proto_aug_official,
    restoration_draws,
    restoration_official,
    sample_proto_aug,
    transfer_loss,
    update_prototypes_official,
)
from ncil.methods.prototypes import split_halves


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def linear(weight, bias):
    layer = nn.Linear(len(weight[0]), len(weight), dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(t(weight))
        layer.bias.copy_(t(bias))
    return layer


# --- weights (4.8) ---------------------------------------------------------------------------------------------


def test_official_constants_are_the_spec_values():
    # the weights that are method options are checked where they are composed (tests/test_presets.py)
    assert PR_RESTORE_WEIGHT == 0.1 and CONTRAST_TEMPERATURE == 0.07
    assert (MIXUP_ALPHA, MIXUP_ROUNDS, MIXUP_CLAMP, MIXUP_FALLBACK) == (20, 4, (0.4, 0.6), 0.5)


# --- mixup (2.4) -----------------------------------------------------------------------------------------------

# K_old = 2, C_t = 3 (classes 2, 3, 4): K_tot = 5, real columns 0..19, pair columns 20 (3,2), 21 (4,2), 22 (4,3).
MIX_LAYOUT = HeadLayout(2, 3)


def test_mix_round_by_hand():
    # x: 4 images of shape (1, 1, 2); y = 2, 3, 2, 4; perm = 2, 0, 3, 1; lam = 0.45, 0.5, 0.6, 0.55.
    #   i=0: y=2 vs y[2]=2 -> same class, dropped.
    #   i=1: y=3 vs y[0]=2 -> 0.5  * (1, 2)   + 0.5  * (0, 10) = (0.5, 6.0),   label pair (3,2) -> 20
    #   i=2: y=2 vs y[3]=4 -> 0.6  * (4, 8)   + 0.4  * (10, 20) = (6.4, 12.8), label pair (4,2) -> 21
    #   i=3: y=4 vs y[1]=3 -> 0.55 * (10, 20) + 0.45 * (1, 2)  = (5.95, 11.9), label pair (4,3) -> 22
    x = t([[0.0, 10.0], [1.0, 2.0], [4.0, 8.0], [10.0, 20.0]]).view(4, 1, 1, 2)
    y = torch.tensor([2, 3, 2, 4])
    mixed, labels = mix_round(x, y, torch.tensor([2, 0, 3, 1]), t([0.45, 0.5, 0.6, 0.55]), MIX_LAYOUT)
    assert mixed.shape == (3, 1, 1, 2)
    assert mixed.reshape(-1).tolist() == pytest.approx([0.5, 6.0, 6.4, 12.8, 5.95, 11.9], abs=1e-12)
    assert labels.tolist() == [20, 21, 22]


def test_clamp_lambdas():
    lam = t([0.39, 0.4, 0.47, 0.6, 0.61, 0.0, 1.0])
    assert clamp_lambdas(lam).tolist() == [0.5, 0.4, 0.47, 0.6, 0.5, 0.5, 0.5]


def test_beta_is_a_ratio_of_gamma_sums_of_the_generator_uniforms():
    # alpha = 2: G_k = -log(1 - u_k1) - log(1 - u_k2), lambda = G_0 / (G_0 + G_1).
    lam = beta_symmetric(2, 3, torch.Generator().manual_seed(5))
    u = torch.rand((3, 2, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for i in range(3):
        g0 = -math.log(1 - u[i, 0, 0].item()) - math.log(1 - u[i, 0, 1].item())
        g1 = -math.log(1 - u[i, 1, 0].item()) - math.log(1 - u[i, 1, 1].item())
        assert lam[i].item() == pytest.approx(g0 / (g0 + g1), rel=1e-12)
    assert lam.dtype == torch.float64


def test_beta_moments():
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)): a = 20 -> 1/164; a = 1 (uniform) -> 1/12.
    g = torch.Generator().manual_seed(0)
    lam = beta_symmetric(20, 40000, g)
    assert abs(lam.mean().item() - 0.5) < 0.002
    assert lam.var().item() == pytest.approx(1 / 164, rel=0.03)
    uni = beta_symmetric(1, 40000, g)
    assert uni.var().item() == pytest.approx(1 / 12, rel=0.03)
    assert bool(torch.isfinite(lam).all())
    with pytest.raises(ValueError, match="positive integer"):
        beta_symmetric(20.5, 3, g)


def test_mixup_batch_follows_the_documented_draw_order():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([2, 3, 4, 2, 3, 4, 2, 2])
    mixed, labels = mixup_batch(x, y, MIX_LAYOUT, g)
    # Replay: per round one randperm(B), then one rand((B, 2, 20), float64).
    replay = torch.Generator().manual_seed(11)
    parts_x, parts_y = [], []
    for _ in range(4):
        perm = torch.randperm(8, generator=replay)
        u = torch.rand((8, 2, 20), generator=replay, dtype=torch.float64)
        gam = (-torch.log1p(-u)).sum(2)
        lam = clamp_lambdas(gam[:, 0] / gam.sum(1))
        mx, my = mix_round(x, y, perm, lam, MIX_LAYOUT)
        parts_x.append(mx)
        parts_y.append(my)
    assert torch.equal(mixed, torch.cat(parts_x)) and torch.equal(labels, torch.cat(parts_y))
    assert torch.equal(g.get_state(), replay.get_state())  # nothing else was drawn


def test_mixup_rows_never_mix_one_class_and_labels_are_pair_columns():
    g = torch.Generator().manual_seed(3)
    lay = HeadLayout(50, 10)
    y = 50 + torch.randint(0, 10, (64,), generator=g)
    x = torch.arange(64, dtype=torch.float32).view(64, 1, 1, 1).expand(64, 3, 2, 2).contiguous()
    mixed, labels = mixup_batch(x, y, lay, g)
    assert mixed.shape[1:] == (3, 2, 2) and labels.shape == (mixed.shape[0],)
    assert bool(((labels >= 240) & (labels < 240 + 45)).all())
    assert bool((mixed >= 0).all()) and bool((mixed <= 63).all())


def test_mixup_expected_rows_per_batch_near_spec_483():
    # Spec 2.4: C_t = 10, B = 64 from a balanced pool of 500 images per class -> 256 + 4*64*(1 - p_same) = 483,
    # p_same = E[n_{y_i}] / B = (1 + 63 * 499/4999) / 64 = 0.1139. Per batch the row count has a std of about 5.3,
    # so the mean of 100 batches is within 3 rows (more than 5 standard errors).
    g = torch.Generator().manual_seed(0)
    pool = torch.arange(10).repeat_interleave(500)
    lay = HeadLayout(0, 10)
    x = torch.zeros(64, 1, 1, 1)
    rows = []
    for _ in range(100):
        y = pool[torch.randperm(5000, generator=g)[:64]]
        _, labels = mixup_batch(x, y, lay, g)
        rows.append(4 * 64 + labels.numel())
    assert sum(rows) / len(rows) == pytest.approx(482.8, abs=3.0)


def test_mixup_single_class_batch_gives_no_rows():
    mixed, labels = mixup_batch(torch.ones(5, 3, 2, 2), torch.full((5,), 3), MIX_LAYOUT, torch.Generator().manual_seed(0))
    assert mixed.shape == (0, 3, 2, 2) and labels.shape == (0,)


def test_mixup_rejects_old_labels():
    with pytest.raises(ValueError, match="current-task"):
        mixup_batch(torch.ones(2, 3, 2, 2), torch.tensor([1, 3]), MIX_LAYOUT, torch.Generator())


# --- supervised contrastive (4.2) --------------------------------------------------------------------------------

# Queries q1 = (2, 0) -> (1, 0), q2 = (0, 0.5) -> (0, 1); keys k1 = (5, 0) -> (1, 0), k2 = (0, 1),
# k3 = (3, 4) -> (0.6, 0.8) (an appended prototype). Labels: queries 0, 1; keys 0, 1, 0. tau = 1.
#   row 1: s = [q1.k1, q1.k1, q1.k2, q1.k3] = [1, 1, 0, 0.6], positives [1, 1, 0, 1], negatives {k2}: sum e^0 = 1
#          loss_1 = (2 log(1 + e^-1 * 1) + log(1 + e^-0.6 * 1)) / 3
#   row 2: s = [q2.k2, q2.k1, q2.k2, q2.k3] = [1, 0, 1, 0.8], positives [1, 0, 1, 0], negatives {k1, k3}: 1 + e^0.8
#          loss_2 = 2 log(1 + e^-1 (1 + e^0.8)) / 2
Q = t([[2.0, 0.0], [0.0, 0.5]])
K = t([[5.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
QL, KL = torch.tensor([0, 1]), torch.tensor([0, 1, 0])
LOSS_1 = (2 * math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-0.6))) / 3
LOSS_2 = math.log(1 + math.exp(-1) * (1 + math.exp(0.8)))


def test_contrastive_by_hand():
    loss = supervised_contrastive(Q, K, QL, KL, temperature=1.0)
    # log(1 + e^-1) = 0.3132617, log(1 + e^-0.6) = 0.4374879 -> loss_1 = 0.3546704;
    # log(1 + e^-1 * 3.2255409) = 0.7823525 -> loss_2; mean 0.5685115.
    assert loss.item() == pytest.approx((LOSS_1 + LOSS_2) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(0.5685115, abs=1e-6)
    assert loss.dtype == torch.float32


def test_contrastive_temperature_scales_similarities():
    # tau = 0.5 doubles every similarity: row 2 becomes log(1 + e^-2 (e^0 + e^1.6)), row 1 likewise.
    loss = supervised_contrastive(Q, K, QL, KL, temperature=0.5)
    row1 = (2 * math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1.2))) / 3
    row2 = math.log(1 + math.exp(-2) * (1 + math.exp(1.6)))
    assert loss.item() == pytest.approx((row1 + row2) / 2, rel=1e-6)


def test_contrastive_fp32_for_half_inputs_and_keys_get_no_gradient():
    q = Q.clone().to(torch.bfloat16).requires_grad_(True)
    k = K.clone().to(torch.bfloat16).requires_grad_(True)
    loss = supervised_contrastive(q, k, QL, KL, temperature=0.07)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    assert q.grad is not None and k.grad is None


def test_contrastive_decreases_when_a_positive_key_moves_toward_its_query():
    # Row 2's own key k2 rotates from (1, 1) toward q2 = (0, 1): the loss falls monotonically.
    values = []
    for x in (1.0, 0.5, 0.2, 0.0):
        keys = t([[5.0, 0.0], [x, 1.0], [3.0, 4.0]])
        values.append(supervised_contrastive(Q, keys, QL, KL, temperature=0.07).item())
    assert values == sorted(values, reverse=True) and values[0] > values[-1]


def test_contrastive_keys_append_prototypes_with_rotation0_labels():
    feats, labels = contrastive_keys(torch.zeros(4, 2), torch.tensor([8, 9, 10, 11]), torch.ones(2, 2), torch.tensor([0, 1]))
    assert feats.shape == (6, 2) and labels.tolist() == [8, 9, 10, 11, 0, 4]
    same, same_labels = contrastive_keys(torch.zeros(4, 2), torch.tensor([8, 9, 10, 11]))
    assert same.shape == (4, 2) and same_labels.tolist() == [8, 9, 10, 11]


# --- transfer (3.4, 4.4) -----------------------------------------------------------------------------------------


def test_identity_transfer_is_exact_identity_and_draws_nothing():
    state = torch.get_rng_state()
    layer = identity_transfer(3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(layer.weight, torch.eye(3)) and torch.equal(layer.bias, torch.zeros(3))
    x = torch.randn(5, 3)
    assert torch.equal(layer(x), x)
    assert layer.weight.requires_grad and layer.weight.device.type == "cpu"


def test_transfer_loss_by_hand():
    f = t([[3.0, 4.0], [1.0, 1.0]])
    old = t([[0.0, 0.0], [1.0, 1.0]])
    # Identity T: rows (3, 4) -> 5 and (0, 0) -> 0; mean 2.5.
    assert transfer_loss(f, old, identity_transfer(2, dtype=torch.float64)).item() == pytest.approx(2.5, rel=1e-12)
    # T = 2I + (1, 0): T(old) = (1, 0), (3, 2); differences (2, 4) -> sqrt 20, (-2, -1) -> sqrt 5; mean 1.5 sqrt 5.
    tr = linear([[2.0, 0.0], [0.0, 2.0]], [1.0, 0.0])
    loss = transfer_loss(f, old, tr)
    assert loss.item() == pytest.approx(1.5 * math.sqrt(5), rel=1e-12)
    loss.backward()
    assert tr.weight.grad is not None and tr.weight.grad.abs().sum() > 0


# --- PKS, code form (4.6 [code]) -----------------------------------------------------------------------------------


def test_pks_official_one_row_uses_l1_weights():
    # R = 1, N = 2: f = (0, 0); M = (1, 0), (3, 4): G (L1) = 1, 7 (L2 would give 1, 5) -> w = 1, 1/7.
    # M - M_old = (3, 4), (6, 8): D = 5, 10. L = (5 + 10/7) / (1 * 2) / 2 = 45/28.
    m = t([[[1.0, 0.0], [3.0, 4.0]]])
    old = m - t([[[3.0, 4.0], [6.0, 8.0]]])
    assert pks_official(m, old, t([[0.0, 0.0]])).item() == pytest.approx(45 / 28, rel=1e-7)


def test_pks_official_two_rows_three_positions():
    # Row 0: f = (0, 0); M = (1, 0), (0, 2), (-4, 0): G = 1, 2, 4 -> w = 1, 1/2, 1/4;
    #        deltas (3, 4), (0, 1), (6, 8): D = 5, 1, 10; sum w D = 5 + 0.5 + 2.5 = 8.
    # Row 1: f = (1, 1); M = (2, 1), (1, 4), (3, 3): G = 1, 3, 4 -> w = 1, 1/3, 1/4;
    #        deltas (0, 0), (3, 0), (0, 4): D = 0, 3, 4; sum w D = 0 + 1 + 1 = 2.
    # L = (8 + 2) / (R N = 6) / (N = 3) = 10/18.
    m = t([[[1.0, 0.0], [0.0, 2.0], [-4.0, 0.0]], [[2.0, 1.0], [1.0, 4.0], [3.0, 3.0]]]).requires_grad_(True)
    old = m.detach() - t([[[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]], [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]])
    f = t([[0.0, 0.0], [1.0, 1.0]]).requires_grad_(True)
    loss = pks_official(m, old, f)
    assert loss.item() == pytest.approx(10 / 18, rel=1e-7)
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0  # f enters only through w: no stop-gradient


# --- PR, code form (4.7 [code]) ------------------------------------------------------------------------------------


def test_pr_centers_and_offsets_by_hand():
    mu = pr_centers_official(t([[1.0, 1.0]]), t([[10.0, 0.0]]))
    assert mu.tolist() == [[1.0, 1.0], [10.0, 0.0]]
    # Labels 4y + k: 0 and 3 -> class 0, 5 and 6 -> class 1 (rotated views vs the unrotated centre).
    f = t([[2.0, 1.0], [1.0, 3.0], [10.0, 1.0], [12.0, 2.0]])
    o = pr_offsets(f, torch.tensor([0, 3, 5, 6]), mu)
    assert o.tolist() == [[1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [2.0, 2.0]]


def test_pr_split_sorted_half_and_sorted_complement():
    s1, s2 = pr_split_official(10, torch.Generator().manual_seed(4))
    assert len(s1) == len(s2) == 5
    assert s1.tolist() == sorted(s1.tolist()) and s2.tolist() == sorted(s2.tolist())
    assert sorted(s1.tolist() + s2.tolist()) == list(range(10))
    r1, r2 = split_halves(10, torch.Generator().manual_seed(4), sort=True)  # one randperm(10), halves sorted
    assert torch.equal(s1, r1) and torch.equal(s2, r2)
    with pytest.raises(ValueError, match="even"):
        pr_split_official(7, torch.Generator())


def test_offset_loss_official_by_hand():
    # Differences (1, -1), (-2, 0): squares 1, 1, 4, 0 -> mean 1.5, divided by d = 2 -> 0.75.
    assert offset_loss_official(t([[1.0, 0.0], [0.0, 2.0]]), t([[0.0, 1.0], [2.0, 2.0]])).item() == pytest.approx(0.75)


def _restoration_head():
    # HeadLayout(2, 1): K_old = 2, K_tot = 3, 12 real columns. Column 0 (class 0, rot 0) reads x, column 4
    # (class 1, rot 0) reads y; column 1 (class 0, rot 1) and 8 (class 2) get large weights that must be ignored.
    w = [[0.0, 0.0]] * 12
    w[0], w[4], w[1], w[8] = [1.0, 0.0], [0.0, 1.0], [50.0, 50.0], [-30.0, 40.0]
    return linear(w, [0.0] * 12)


def test_restoration_official_by_hand():
    # mu0 = (0, 0), mu1 = (1, 1), mu2 = (5, 5); O^s = (1, 0), (0, 2); classes c = 1, 0; pi = 1, 0.
    #   r_0 = mu1 + O[1] = (1, 3): logits (1, 3), target 1 -> log(1 + e^-2)
    #   r_1 = mu0 + O[0] = (1, 0): logits (1, 0), target 0 -> log(1 + e^-1)
    lay = HeadLayout(2, 1)
    mu = t([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    offsets = t([[1.0, 0.0], [0.0, 2.0]]).requires_grad_(True)
    loss = restoration_official(_restoration_head(), mu, offsets, torch.tensor([1, 0]), torch.tensor([1, 0]), lay)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-10)  # 0.220095
    loss.backward()
    assert offsets.grad is not None and offsets.grad.abs().sum() > 0


def test_restoration_draws_order():
    classes, perm = restoration_draws(6, 3, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    assert torch.equal(classes, torch.randint(0, 3, (6,), generator=g))
    assert torch.equal(perm, torch.randperm(6, generator=g))
    assert sorted(perm.tolist()) == list(range(6)) and int(classes.max()) < 3


# --- protoAug, code form (4.5) -------------------------------------------------------------------------------------


def _proto_head():
    # HeadLayout(2, 2): K_tot = 4, 16 real columns + 1 mixup column (16). Column 0 reads x, column 4 reads y,
    # the mixup column 16 has weights (100, 100) and must be excluded.
    w = [[0.0, 0.0]] * 17
    w[0], w[4], w[16] = [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]
    return linear(w, [0.0] * 17)


def test_proto_aug_loss_by_hand_and_only_the_head_learns():
    # T = diag(2, 1) + (0, 1): p = (1, 0) -> u = (2, 1); p = (0, 1) -> u = (0, 2). Classes 0, 1 -> targets 0, 4.
    #   row 0: logits col 0 = 2, col 4 = 1, 14 other real columns 0 -> CE = log(e^2 + e + 14) - 2
    #   row 1: logits col 0 = 0, col 4 = 2, 14 others 0 (plus col 0) -> CE = log(e^2 + 15) - 2
    lay = HeadLayout(2, 2)
    head, tr = _proto_head(), linear([[2.0, 0.0], [0.0, 1.0]], [0.0, 1.0])
    protos, classes = t([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    loss = proto_aug_loss(head, tr, protos, classes, lay, temperature=1.0)
    expected = (math.log(math.e**2 + math.e + 14) - 2 + math.log(math.e**2 + 15) - 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-10)  # 1.1455443
    loss.backward()
    assert tr.weight.grad is None and tr.bias.grad is None
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert head.weight.grad[16].abs().sum() == 0  # the mixup row takes no part
    # temperature 0.1 divides the logits: same as CE on 10x the restricted logits.
    u = tr(protos).detach()
    ref = torch.nn.functional.cross_entropy(head(u)[:, :16] / 0.1, torch.tensor([0, 4]))
    assert proto_aug_loss(head, tr, protos, classes, lay).item() == pytest.approx(ref.item(), rel=1e-12)


def test_sample_proto_aug_draw_order_and_zero_radius():
    centers = t([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    protos, classes = sample_proto_aug(centers, 0.5, torch.Generator().manual_seed(9), n=64)
    g = torch.Generator().manual_seed(9)
    ref_classes = torch.randint(0, 3, (64,), generator=g)
    ref_noise = torch.randn((64, 2), generator=g, dtype=torch.float64)
    assert torch.equal(classes, ref_classes)
    assert torch.allclose(protos, centers[ref_classes] + 0.5 * ref_noise, rtol=0, atol=1e-15)
    exact, cls0 = sample_proto_aug(centers, 0.0, torch.Generator().manual_seed(9))
    assert torch.equal(exact, centers[cls0]) and exact.shape == (64, 2)


def test_proto_aug_official_returns_the_draw_for_the_contrastive_keys():
    lay = HeadLayout(2, 2)
    head, tr = _proto_head(), identity_transfer(2, dtype=torch.float64)
    centers = t([[1.0, 0.0], [0.0, 1.0]])
    loss, protos, classes = proto_aug_official(head, tr, centers, 0.3, lay, torch.Generator().manual_seed(1), n=8)
    p2, c2 = sample_proto_aug(centers, 0.3, torch.Generator().manual_seed(1), n=8)
    assert torch.equal(protos, p2) and torch.equal(classes, c2)
    assert loss.item() == pytest.approx(proto_aug_loss(head, tr, p2, c2, lay, 0.1).item(), rel=1e-12)


# --- prototype bookkeeping (5.4) -----------------------------------------------------------------------------------


def test_update_prototypes_maps_old_only_and_recomputes_radius():
    # T = 2I + (1, 0): old (1, 2) -> (3, 4); new (5, 6), (7, 8) stay. rhos 4 | 1, 4 -> mean 3 -> r = sqrt 3.
    tr = linear([[2.0, 0.0], [0.0, 2.0]], [1.0, 0.0])
    centers, rhos, radius = update_prototypes_official(t([[1.0, 2.0]]), t([4.0]), t([[5.0, 6.0], [7.0, 8.0]]), t([1.0, 4.0]), tr)
    assert centers.tolist() == [[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
    assert rhos.tolist() == [4.0, 1.0, 4.0]  # the old rho is kept as it was
    assert radius.item() == pytest.approx(math.sqrt(3.0), rel=1e-12)
    assert not centers.requires_grad


def test_update_prototypes_after_task0_maps_nothing():
    centers, rhos, radius = update_prototypes_official(t([]).view(0, 2), t([]), t([[5.0, 6.0]]), t([9.0]), None)
    assert centers.tolist() == [[5.0, 6.0]] and rhos.tolist() == [9.0] and radius.item() == pytest.approx(3.0)


def test_map_prototypes_no_gradient():
    tr = linear([[0.0, 1.0], [1.0, 0.0]], [0.5, 0.0])
    out = map_prototypes(tr, t([[1.0, 2.0], [3.0, 4.0]]))
    assert out.tolist() == [[2.5, 1.0], [4.5, 3.0]] and not out.requires_grad


def test_class_statistics_by_hand():
    # Class 3: (0, 0), (2, 4) -> mean (1, 2); unbiased variances 2, 8 -> rho = 5.
    # Class 7: (1, 1), (1, 3), (1, 5) -> mean (1, 3); variances 0, 4 -> rho = 2.
    feats = t([[0.0, 0.0], [1.0, 1.0], [2.0, 4.0], [1.0, 3.0], [1.0, 5.0]])
    classes, centers, rhos = class_statistics(feats, torch.tensor([3, 7, 3, 7, 7]))
    assert classes.tolist() == [3, 7]
    assert centers.tolist() == [[1.0, 2.0], [1.0, 3.0]]
    assert rhos.tolist() == pytest.approx([5.0, 2.0], rel=1e-12)


# --- classification (4.1) ------------------------------------------------------------------------------------------


def test_classification_loss_uses_all_columns_and_temperature():
    # One row, logits (0.1, 0, 0) with tau = 0.1 -> (1, 0, 0); target 2 (e.g. a mixup column):
    # CE = log(e + 2) - 0 = 1.551445.
    loss = classification_loss(t([[0.1, 0.0, 0.0]]), torch.tensor([2]))
    assert loss.item() == pytest.approx(math.log(math.e + 2), rel=1e-12)
