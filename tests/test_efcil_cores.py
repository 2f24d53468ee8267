"""The exemplar-free benchmark methods' cores (issue 25; docs/efcil.md): FeCAM's shrunk Mahalanobis
classifier, the drift estimates of SDC, ADC and LDC, EFC's empirical feature matrix and penalty, AdaGauss's
covariance adaptation and anti-collapse loss, each on numbers worked by hand in the comments."""

import math

import pytest
import torch

from ncil.methods import adagauss, drift, efc, fecam

S2 = 1 / math.sqrt(2)  # 0.70710678...


def t(values):
    return torch.tensor(values, dtype=torch.float64)


# --- FeCAM --------------------------------------------------------------------------------------------


def test_tukey_ladder():
    # lambda = 0.5: the square root, element-wise: 4 -> 2, 9 -> 3, 0.25 -> 0.5, 0 -> 0
    assert torch.equal(fecam.tukey(t([[4.0, 9.0], [0.25, 0.0]])), t([[2.0, 3.0], [0.5, 0.0]]))
    # lambda = 0: the logarithm, log(e) = 1, log(1) = 0
    assert torch.allclose(fecam.tukey(t([math.e, 1.0]), 0), t([1.0, 0.0]))
    assert fecam.tukey(t([16.0]), 0.25).item() == 2.0
    with pytest.raises(ValueError):
        fecam.tukey(t([-1.0]))


# Two classes in 2-D, three training samples each. The raw features are squares so that the Tukey
# transform (square root) gives integers:
#   class 0 raw [[1, 1], [4, 9], [9, 4]]  -> sqrt [[1, 1], [2, 3], [3, 2]]
#   class 1 raw [[1, 9], [4, 1], [9, 4]]  -> sqrt [[1, 3], [2, 1], [3, 2]]
RAW = t([[1, 1], [4, 9], [9, 4], [1, 9], [4, 1], [9, 4]])
LABELS = torch.tensor([0, 0, 0, 1, 1, 1])


def test_class_statistics_are_the_unbiased_ones():
    # class 0 after sqrt: mean (2, 2); deviations (-1, -1), (0, 1), (1, 0)
    #   var x = (1 + 0 + 1) / (3 - 1) = 1, var y = (1 + 1 + 0) / 2 = 1, cov = (1 + 0 + 0) / 2 = 0.5
    # class 1 after sqrt: mean (2, 2); deviations (-1, 1), (0, -1), (1, 0)
    #   var x = 1, var y = 1, cov = (-1 + 0 + 0) / 2 = -0.5
    means, covs = fecam.class_statistics(fecam.tukey(RAW), LABELS, [0, 1])
    assert torch.equal(means, t([[2, 2], [2, 2]]))
    assert torch.allclose(covs, t([[[1, 0.5], [0.5, 1]], [[1, -0.5], [-0.5, 1]]]))
    with pytest.raises(ValueError):
        fecam.class_statistics(RAW[:4], LABELS[:4], [1])  # class 1 has one sample there


def test_shrinkage_of_diagonal_and_off_diagonal():
    # Sigma = [[1, .5], [.5, 1]]: V1 = mean diagonal = 1, V2 = mean off-diagonal = 0.5
    #   Sigma + 1 * 1 * I + 1 * 0.5 * (1 - I) = [[2, 1], [1, 2]]
    cov = t([[1, 0.5], [0.5, 1]])
    assert torch.allclose(fecam.shrink_covariance(cov), t([[2, 1], [1, 2]]))
    # gamma1 = 2, gamma2 = 0: only the diagonal grows, by 2 * 1
    assert torch.allclose(fecam.shrink_covariance(cov, 2.0, 0.0), t([[3, 0.5], [0.5, 3]]))
    # a zero off-diagonal entry: [[2, 1, 0], [1, 2, 0], [0, 0, 2]], V1 = 2
    #   off-diagonal entries 1, 0, 1, 0, 0, 0: "nonzero" (released code) V2 = 2 / 2 = 1; "all" (paper) 2 / 6 = 1/3
    cov3 = t([[2, 1, 0], [1, 2, 0], [0, 0, 2]])
    assert torch.allclose(fecam.shrink_covariance(cov3), t([[4, 2, 1], [2, 4, 1], [1, 1, 4]]))
    third = 1 / 3
    assert torch.allclose(fecam.shrink_covariance(cov3, offdiag="all"),
                          t([[4, 1 + third, third], [1 + third, 4, third], [third, third, 4]]))
    # a diagonal matrix: no non-zero off-diagonal entry, V2 = 0 (the released code would give 0/0)
    assert torch.allclose(fecam.shrink_covariance(t([[1, 0], [0, 3]])), t([[3, 0], [0, 5]]))


def test_correlation_normalisation():
    # [[4, 2], [2, 9]]: sigma = (2, 3); 2 / (2 * 3) = 1/3
    assert torch.allclose(fecam.normalize_covariance(t([[4, 2], [2, 9]])), t([[1, 1 / 3], [1 / 3, 1]]))


def test_fecam_statistics_shrink_twice_then_normalise():
    # class 0: [[1, .5], [.5, 1]] -> shrink 1: V1 = 1, V2 = .5 -> [[2, 1], [1, 2]]
    #          -> shrink 2: V1 = 2, V2 = 1 -> [[4, 2], [2, 4]] -> normalise (sigma = 2, 2) -> [[1, .5], [.5, 1]]
    # class 1: the same with the off-diagonal negated -> [[1, -.5], [-.5, 1]]
    # prototypes: the raw means, (1 + 4 + 9) / 3 = 14/3 in both coordinates for both classes
    protos, covs = fecam.fecam_statistics(RAW, LABELS, [0, 1])
    assert torch.allclose(protos, t([[14 / 3, 14 / 3], [14 / 3, 14 / 3]]))
    assert torch.allclose(covs, t([[[1, 0.5], [0.5, 1]], [[1, -0.5], [-0.5, 1]]]))
    # without normalisation the twice-shrunk matrices stay: [[4, 2], [2, 4]] and [[4, -2], [-2, 4]]
    _, raw_covs = fecam.fecam_statistics(RAW, LABELS, [0, 1], normalize=False)
    assert torch.allclose(raw_covs, t([[[4, 2], [2, 4]], [[4, -2], [-2, 4]]]))
    # once (the paper's single shrinkage), unnormalised: [[2, 1], [1, 2]]
    _, once = fecam.fecam_statistics(RAW, LABELS, [0], shrink_times=1, normalize=False)
    assert torch.allclose(once[0], t([[2, 1], [1, 2]]))
    # the released ViT recipe: no Tukey, one shrinkage with gamma2 = 0, normalised. Class 0's raw covariance:
    #   raw [[1, 1], [4, 9], [9, 4]], mean (14/3, 14/3); deviations (-11/3, -11/3), (-2/3, 13/3), (13/3, -2/3)
    #   var = (121 + 4 + 169) / 9 / 2 = 294 / 18 = 49/3; cov = (121 - 26 - 26) / 9 / 2 = 69 / 18 = 23/6
    #   shrink (gamma1 = 1, gamma2 = 0): diagonal 98/3, off-diagonal 23/6 -> normalised 23/6 / (98/3) = 23/196
    _, vit = fecam.fecam_statistics(RAW, LABELS, [0], lam=None, shrink_times=1, gamma2=fecam.VIT_GAMMA2)
    assert torch.allclose(vit[0], t([[1, 23 / 196], [23 / 196, 1]]))


def test_mahalanobis_overrides_euclid():
    # class A: mean (0, 0), Sigma = [[1, .5], [.5, 1]], det = .75, inverse = [[4/3, -2/3], [-2/3, 4/3]]
    # class B: mean (3, 0), Sigma = .25 I, inverse 4 I
    # x = (2, 2): Euclid^2 to A = 8, to B = 1 + 4 = 5 (B nearer)
    #   D_A = 4/3 (4 + 4) - 2 * 2/3 * (2 * 2) = 32/3 - 16/3 = 16/3;  D_B = 4 ((-1)^2 + 2^2) = 20 (A nearer)
    means = t([[0, 0], [3, 0]])
    covs = t([[[1, 0.5], [0.5, 1]], [[0.25, 0], [0, 0.25]]])
    d = fecam.mahalanobis(t([[2, 2]]), means, covs)
    assert torch.allclose(d, t([[16 / 3, 20]]))
    assert d.argmin(1).item() == 0 and torch.cdist(t([[2, 2]]), means).argmin(1).item() == 1


def test_fecam_distances_on_the_2d_classes():
    # The two classes above: equal prototypes, opposite correlations.
    # prototype: tukey((14/3, 14/3)) = sqrt(14/3) (1, 1) -> L2-normalised (s, s), s = 1/sqrt(2)
    # query raw (3, 0): / ||.|| -> (1, 0); sqrt -> (1, 0); normalised -> (1, 0)
    # diff = (1 - s, -s):  a^2 + b^2 = 1 - 2s + 2s^2 = 2 - sqrt(2) = 0.585786 (the Euclidean distance, a tie)
    #                      a b = s^2 - s = 0.5 - 0.707107 = -0.207107
    # D_0 = 4/3 (a^2 + b^2) - 4/3 a b = 4/3 (0.585786 + 0.207107) = 1.057191
    # D_1 = 4/3 (a^2 + b^2) + 4/3 a b = 4/3 (0.585786 - 0.207107) = 0.504906  -> class 1
    protos, covs = fecam.fecam_statistics(RAW, LABELS, [0, 1])
    q = t([[3, 0], [0, 3], [5, 5]])
    d = fecam.fecam_distances(q, protos, covs)
    sq, ab = 2 - math.sqrt(2), 0.5 - S2
    expect_0, expect_1 = 4 / 3 * (sq - ab), 4 / 3 * (sq + ab)
    assert expect_0 == pytest.approx(1.057191, abs=1e-6) and expect_1 == pytest.approx(0.504906, abs=1e-6)
    # (0, 3) is the mirror image: diff (-s, 1 - s), the same a^2 + b^2 and a b; (5, 5) lies on the prototype
    assert torch.allclose(d, t([[expect_0, expect_1], [expect_0, expect_1], [0, 0]]), atol=1e-7)
    assert fecam.fecam_predict(q[:2], protos, covs).tolist() == [1, 1]
    # with identity matrices (the first task's cosine classifier) the first two queries tie
    eye = torch.eye(2, dtype=torch.float64).expand(2, 2, 2)
    assert torch.allclose(fecam.fecam_distances(q[:1], protos, eye), t([[sq, sq]]), atol=1e-7)


# --- drift compensation: SDC, ADC, LDC -----------------------------------------------------------------

# sigma^2 = 1 / (2 ln 2) makes the kernel exp(-d^2 / (2 sigma^2)) = 2^(-d^2): weights 1, 1/2, 1/4 at d^2 = 0, 1, 2
SIGMA_HALVING = math.sqrt(1 / (2 * math.log(2)))
OLD3 = t([[0, 0], [1, 0], [1, 1]])  # three current samples under the old model
DELTA3 = t([[1, 0], [0, 2], [4, 4]])  # their displacements F_t(x) - F_{t-1}(x)


def test_sdc_drift_on_three_points():
    # prototype (0, 0): d^2 = 0, 1, 2 -> w = 1, 1/2, 1/4, sum 7/4
    #   Delta = (1 * (1, 0) + 1/2 * (0, 2) + 1/4 * (4, 4)) / (7/4) = (2, 2) / (7/4) = (8/7, 8/7)
    # prototype (1, 1): d^2 = 2, 1, 0 -> w = 1/4, 1/2, 1
    #   Delta = ((1/4, 0) + (0, 1) + (4, 4)) / (7/4) = (17/4, 5) * 4/7 = (17/7, 20/7)
    protos = t([[0, 0], [1, 1]])
    got = drift.sdc_drift(OLD3, OLD3 + DELTA3, protos, sigma=SIGMA_HALVING, eps=0.0)
    assert torch.allclose(got, t([[8 / 7, 8 / 7], [17 / 7, 20 / 7]]))
    assert torch.allclose(drift.sdc_compensate(OLD3, OLD3 + DELTA3, protos, sigma=SIGMA_HALVING, eps=0.0),
                          t([[8 / 7, 8 / 7], [1 + 17 / 7, 1 + 20 / 7]]))
    # the released +1e-5 changes these by less than 1e-4
    assert torch.allclose(drift.sdc_drift(OLD3, OLD3 + DELTA3, protos, sigma=SIGMA_HALVING), got, atol=1e-4)
    # a prototype far from every sample: exp(-huge) = 0, every weight is the 1e-5 alone, so the drift is the
    # plain mean displacement ((1 + 0 + 4) / 3, (0 + 2 + 4) / 3) = (5/3, 2)
    far = drift.sdc_drift(OLD3, OLD3 + DELTA3, t([[100, 100]]))
    assert torch.allclose(far, t([[5 / 3, 2]]))


def _old(x):  # the old model: the identity on 2-D "images"
    return x * 1.0


def _new(x):  # the new model: F_t(x) = 2x + (1, -1), so F_t(x) - F_{t-1}(x) = x + (1, -1)
    return 2 * x + t([1.0, -1.0])


def test_adc_attack_steps_with_the_batch_gradient_norm():
    # target prototype p = (3, 4); samples (0, 1) and (6, 8); residuals r = F(x) - p = (-3, -3), (3, 4)
    # MSE gradient = 2 r / (N D) = r / 2; its norm over the whole batch: sqrt(9 + 9 + 9 + 16) / 2 = sqrt(43) / 2
    # step: x - alpha g / ||g|| = x - alpha r / sqrt(43); alpha = sqrt(43) / 2 moves each sample by r / 2:
    #   step 1: (1.5, 2.5), (4.5, 6); residuals (-1.5, -1.5), (1.5, 2), norm sqrt(43) / 2 -> step 2: (3, 4), (3, 4)
    protos = t([[3, 4], [-5, -5]])
    x = t([[0, 1], [6, 8]])
    one, _ = drift.adc_attack(_old, x, protos, 0, alpha=math.sqrt(43) / 2, steps=1)
    assert torch.allclose(one, t([[1.5, 2.5], [4.5, 6]]))
    two, ok = drift.adc_attack(_old, x, protos, 0, alpha=math.sqrt(43) / 2, steps=2)
    assert torch.allclose(two, t([[3, 4], [3, 4]])) and ok.tolist() == [True, True]
    # a third step meets a zero gradient: the samples stay (the released code would divide 0 by 0)
    three, _ = drift.adc_attack(_old, x, protos, 0, alpha=math.sqrt(43) / 2, steps=3)
    assert torch.allclose(three, two)
    # samples (0, 0), (6, 8), alpha = 5: per-sample norms 5 and 5 bring both onto p in one step;
    # the batch norm sqrt(9 + 16 + 9 + 16) = 5 sqrt(2) moves each by r / sqrt(2): (0, 0) -> (3, 4) / sqrt(2)
    x = t([[0, 0], [6, 8]])
    per_sample, _ = drift.adc_attack(_old, x, protos, 0, alpha=5.0, steps=1, grad_norm="sample")
    assert torch.allclose(per_sample, t([[3, 4], [3, 4]]))
    batch, _ = drift.adc_attack(_old, x, protos, 0, alpha=5.0, steps=1)
    assert torch.allclose(batch, t([[3 * S2, 4 * S2], [6 - 3 * S2, 8 - 4 * S2]]))
    # clamping to [x_min, x_max] = [0, 2] after the step: (2.12, 2.83) -> (2, 2)
    clamped, _ = drift.adc_attack(_old, x, protos, 0, alpha=5.0, steps=1, x_min=0.0, x_max=2.0)
    assert torch.allclose(clamped[0], t([2, 2]))


def test_adc_success_mask_and_drift():
    # prototypes p0 = (3, 4) (target), p1 = (0, 0); alpha = 1, one per-sample step of length 1 towards p0:
    #   (0, 0) -> (0.6, 0.8): nearer p1 (distance 1) than p0 (distance 4): failure
    #   (3.5, 4.5) -> (3.5, 4.5) - (1, 1) / sqrt(2) = (2.79, 3.79): nearer p0: success
    protos = t([[3, 4], [0, 0]])
    adv, ok = drift.adc_attack(_old, t([[0, 0], [3.5, 4.5]]), protos, 0, alpha=1.0, steps=1, grad_norm="sample")
    assert torch.allclose(adv, t([[0.6, 0.8], [3.5 - S2, 4.5 - S2]])) and ok.tolist() == [False, True]
    # the displacement on the adversarial samples (3, 4), (3, 4): F_t - F_{t-1} = x + (1, -1) = (4, 3)
    assert torch.allclose(drift.mean_displacement(_old, _new, t([[3, 4], [3, 4]])), t([4, 3]))


def test_adc_compensate_end_to_end():
    # current images (0, 1), (6, 8), (-5, -5); k = 2 nearest to p0 = (3, 4): (0, 1) at sqrt(18), (6, 8) at 5
    # attack as in the first ADC test: both land on (3, 4), both succeed; drift (3, 4) + (1, -1) = (4, 3)
    # -> p0 moves to (7, 7) = F_t((3, 4)): where the new model puts the old class's location
    # p1 = (-5, -5): nearest (-5, -5) and (0, 1); its drift is the mean of its own adversarial samples + (1, -1)
    images = t([[0, 1], [6, 8], [-5, -5]])
    protos = t([[3, 4], [-5, -5]])
    kw = dict(alpha=math.sqrt(43) / 2, steps=2, k=2)
    moved = drift.adc_compensate(_old, _new, images, protos, **kw)
    assert torch.allclose(moved[0], t([7, 7]))
    assert drift.nearest_samples(images, protos[1], 2).tolist() == [2, 0]
    adv1, ok1 = drift.adc_attack(_old, images[[2, 0]], protos, 1, alpha=kw["alpha"], steps=2)
    assert ok1.all()
    assert torch.allclose(moved[1], protos[1] + adv1.mean(0) + t([1, -1]))
    # no success anywhere (a single step too short to leave p1's side): the unperturbed nearest samples are used
    far = drift.adc_compensate(_old, _new, t([[0, 0], [0.5, 0]]), t([[3, 4], [0, 0]]), alpha=0.1, steps=1, k=2)
    #   for p0: the two samples stay nearer p1, drift = mean((0, 0), (0.5, 0)) + (1, -1) = (1.25, -1)
    assert torch.allclose(far[0], t([3 + 1.25, 4 - 1]))


def test_ldc_projector_recovers_a_known_map():
    # true map P = [[2, 1], [0, 1]]; old features Z = [[1, 0], [0, 1], [1, 1]], new = Z P^T = [[2, 0], [1, 1], [3, 1]]
    # least squares recovers P exactly; prototype (1, 2) -> P (1, 2) = (2 + 2, 0 + 2) = (4, 2)
    p_true = t([[2, 1], [0, 1]])
    z_old = t([[1, 0], [0, 1], [1, 1]])
    z_new = z_old @ p_true.T
    assert torch.allclose(z_new, t([[2, 0], [1, 1], [3, 1]]))
    p = drift.fit_projector(z_old, z_new)
    assert torch.allclose(p, p_true)
    assert torch.allclose(drift.apply_projector(p, t([[1, 2]])), t([[4, 2]]))
    # ridge 1: Z^T Z = [[2, 1], [1, 2]], Z^T Z_new = [[5, 1], [4, 2]]
    #   (Z^T Z + I)^{-1} = [[3, 1], [1, 3]]^{-1} = 1/8 [[3, -1], [-1, 3]]
    #   P^T = 1/8 [[3, -1], [-1, 3]] [[5, 1], [4, 2]] = 1/8 [[11, 1], [7, 5]]  ->  P = 1/8 [[11, 7], [1, 5]]
    assert torch.allclose(drift.fit_projector(z_old, z_new, ridge=1.0), t([[11, 7], [1, 5]]) / 8)


def test_ldc_adam_fit_approaches_the_least_squares_map():
    # the released training (Adam on the MSE, bias-free, nn.Linear's initialisation) on exactly linear data:
    # with enough steps it reaches the closed-form map
    g = torch.Generator().manual_seed(0)
    p_true = t([[2, 1], [0, 1]])
    z_old = torch.randn(64, 2, generator=g, dtype=torch.float64)
    p = drift.fit_projector_adam(z_old, z_old @ p_true.T, epochs=300, lr=0.05, batch_size=16, generator=g)
    assert torch.allclose(p, p_true, atol=1e-3)


# --- EFC / EFC++ -----------------------------------------------------------------------------------------

# A tiny linear head: K = 2 classes, D = 2, W = [[1, 2], [0, 1]], no bias. Two samples:
#   f = (0, 0):    logits (0, 0)            -> p = (1/2, 1/2)
#   f = (ln 3, 0): logits (ln 3, 0)         -> p = (3/4, 1/4)
W = t([[1, 2], [0, 1]])
F2 = t([[0, 0], [math.log(3), 0]])


def test_log_softmax_jacobian_of_a_linear_head():
    # sample 1: sum_j p_j W_j = (1/2)(1, 2) + (1/2)(0, 1) = (1/2, 3/2)
    #   J_1 = (1, 2) - (1/2, 3/2) = (1/2, 1/2),  J_2 = (0, 1) - (1/2, 3/2) = (-1/2, -1/2)
    # sample 2: sum_j p_j W_j = (3/4)(1, 2) + (1/4)(0, 1) = (3/4, 7/4)
    #   J_1 = (1/4, 1/4),  J_2 = (-3/4, -3/4)
    jac = efc.log_softmax_jacobian(F2, W)
    assert torch.allclose(jac, t([[[0.5, 0.5], [-0.5, -0.5]], [[0.25, 0.25], [-0.75, -0.75]]]))
    # the same by automatic differentiation of log_softmax(W f)
    auto = torch.stack([torch.autograd.functional.jacobian(lambda f: torch.log_softmax(W @ f, 0), f) for f in F2])
    assert torch.allclose(jac, auto)


def test_empirical_feature_matrix_by_hand():
    # E_x = sum_k p_k J_k^T J_k
    #   sample 1: 1/2 (1/2, 1/2)^T (1/2, 1/2) + 1/2 (same) = [[1/4, 1/4], [1/4, 1/4]]
    #   sample 2: 3/4 (1/4)^2 [[1, 1], [1, 1]] + 1/4 (3/4)^2 [[1, 1], [1, 1]] = (3/64 + 9/64) = 3/16 [[1, 1], [1, 1]]
    # (closed form: W^T (diag p - p p^T) W, diag p - p p^T = p1 p2 [[1, -1], [-1, 1]], W^T (1, -1) = (1, 1))
    # E = 1/2 (1/4 + 3/16) [[1, 1], [1, 1]] = 7/32 [[1, 1], [1, 1]]
    efm = efc.empirical_feature_matrix(F2, W)
    assert torch.allclose(efm, 7 / 32 * torch.ones(2, 2, dtype=torch.float64))
    jac = efc.log_softmax_jacobian(F2, W)
    p = torch.softmax(F2 @ W.T, 1)
    by_sum = torch.einsum("nk,nkd,nke->de", p, jac, jac) / 2
    assert torch.allclose(efm, by_sum)
    # a bias shifts the probabilities, not the form: bias (-ln 3, 0) makes sample 2's logits (0, 0), sample 1's
    # (-ln 3, 0), p = (1/4, 3/4): p1 p2 = 3/16 and 1/4 again, the same E
    assert torch.allclose(efc.empirical_feature_matrix(F2, W, t([-math.log(3), 0])), efm)


def test_efm_penalty_by_hand():
    # (lambda E + eta I), lambda = 10, eta = 0.1, E = 7/32 [[1, 1], [1, 1]]
    #   delta = (1, -1): E-term 7/32 (1 - 1)^2 = 0 (no change of the old head's log-odds, (1, 1).(1, -1) = 0);
    #                    damping 0.1 * 2 = 0.2
    #   delta = (1, 1):  10 * 7/32 * (1 + 1)^2 = 8.75, + 0.1 * 2 = 8.95
    #   batch mean (0.2 + 8.95) / 2 = 4.575
    efm = 7 / 32 * torch.ones(2, 2, dtype=torch.float64)
    old = t([[0, 0], [1, 1]])
    new = old + t([[1, -1], [1, 1]])
    assert efc.efm_penalty(new[:1], old[:1], efm).item() == pytest.approx(0.2)
    assert efc.efm_penalty(new[1:], old[1:], efm).item() == pytest.approx(8.95)
    assert efc.efm_penalty(new, old, efm).item() == pytest.approx(4.575)
    assert efc.efm_penalty(new, old, efm, lam=0.0, eta=1.0).item() == pytest.approx(2.0)  # plain feature distillation


def test_efm_drift_by_hand():
    # E = I; samples and displacements of the SDC test; prototypes (0, 0) and (1, 1)
    #   d = -||z - mu||^2: prototype 0: 0, -1, -2; prototype 1: -2, -1, 0; over all: min -2, max 0
    #   scaled (d + 2) / 2: prototype 0: 1, 1/2, 0; prototype 1: 0, 1/2, 1
    #   sigma^2 = 1 / (4 ln 2): exp(s / (2 sigma^2)) = 4^s: weights 4, 2, 1 (and 1, 2, 4), sum 7
    #   drift 0 = (4 (1, 0) + 2 (0, 2) + (4, 4)) / 7 = (8/7, 8/7); drift 1 = ((1, 0) + 2 (0, 2) + 4 (4, 4)) / 7 = (17/7, 20/7)
    sigma = math.sqrt(1 / (4 * math.log(2)))
    eye = torch.eye(2, dtype=torch.float64)
    protos = t([[0, 0], [1, 1]])
    got = efc.efm_drift(OLD3, OLD3 + DELTA3, protos, eye, sigma)
    assert torch.allclose(got, t([[8 / 7, 8 / 7], [17 / 7, 20 / 7]]))
    # the scaling is over all prototypes at once: a third, distant prototype changes the first two's drift
    more = efc.efm_drift(OLD3, OLD3 + DELTA3, t([[0, 0], [1, 1], [5, 5]]), eye, sigma)
    assert not torch.allclose(more[:2], got)
    # along a direction the EFM ignores, samples are equally near: E = [[0, 0], [0, 1]], prototype (0, 0) sees
    # OLD3's y-coordinates 0, 0, 1 only: d = 0, 0, -1, scaled 1, 1, 0, weights 4, 4, 1 (sum 9)
    #   drift = (4 (1, 0) + 4 (0, 2) + (4, 4)) / 9 = (8/9, 12/9)
    only_y = efc.efm_drift(OLD3, OLD3 + DELTA3, t([[0, 0]]), t([[0, 0], [0, 1]]), sigma)
    assert torch.allclose(only_y, t([[8 / 9, 12 / 9]]))


def test_gaussian_samples_and_pr_ace():
    g = torch.Generator().manual_seed(0)
    means = t([[0, 0], [10, -10]])
    covs = torch.stack([t([[1, 0.5], [0.5, 1]]), torch.zeros(2, 2, dtype=torch.float64)])
    feats, labels = efc.sample_gaussians(means, covs, [4000, 3], generator=g)
    assert labels.tolist() == [0] * 4000 + [1] * 3
    # a zero covariance (+1e-5 I): samples within a few 1e-2 of the mean
    assert torch.allclose(feats[4000:], means[1].expand(3, 2), atol=0.05)
    assert torch.allclose(torch.cov(feats[:4000].T), covs[0], atol=0.08)
    # PR-ACE: one old class (0), current task classes 1 and 2 (task_start = 1)
    #   current row logits (5, ln 3, 0), target 1: only (ln 3, 0) count, p = 3/4, CE = ln(4/3); the old logit 5 is ignored
    #   replayed row logits (0, 0, 0), target 0: CE = ln 3
    #   total ln(4/3) + ln 3 = ln 4
    loss = efc.pr_ace_loss(t([[5, math.log(3), 0]]), torch.tensor([1]), 1, t([[0, 0, 0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(4))


# --- AdaGauss ----------------------------------------------------------------------------------------------


def test_anti_collapse_loss_by_hand():
    # batch (1, 1), (2, 3), (3, 2): covariance [[1, .5], [.5, 1]] (the FeCAM class 0 above)
    # Cholesky: L11 = sqrt(1) = 1, L21 = .5 / 1 = .5, L22 = sqrt(1 - .5^2) = sqrt(.75) = 0.866025
    # beta = 1: -(min(1, 1) + min(.866025, 1)) / 2 = -0.933013
    feats = t([[1, 1], [2, 3], [3, 2]]).requires_grad_(True)
    loss = adagauss.anti_collapse_loss(feats)
    assert loss.item() == pytest.approx(-(1 + math.sqrt(0.75)) / 2)
    (g,) = torch.autograd.grad(loss, feats)
    assert g.abs().sum() > 0  # L22 < beta still pushes
    # features doubled: covariance x 4, L = [[2, 0], [1, sqrt(3)]]; both diagonal entries clamp at beta = 1:
    # loss -1 and no gradient (no push beyond beta)
    feats2 = (2 * t([[1, 1], [2, 3], [3, 2]])).requires_grad_(True)
    loss2 = adagauss.anti_collapse_loss(feats2)
    assert loss2.item() == pytest.approx(-1.0)
    assert torch.equal(torch.autograd.grad(loss2, feats2)[0], torch.zeros(3, 2, dtype=torch.float64))
    # beta = 2: -(2 + sqrt(3)) / 2
    assert adagauss.anti_collapse_loss(feats2, beta=2.0).item() == pytest.approx(-(2 + math.sqrt(3)) / 2)


def test_covariance_adaptation_through_a_linear_adapter():
    # mu = (1, 0), Sigma = [[1, 0], [0, 4]]; adapter x -> A x + b, A = [[1, 1], [0, 2]], b = (0, 1)
    #   mu' = (1 + 0 + 0, 0 + 0 + 1) = (1, 1)
    #   A Sigma = [[1, 4], [0, 8]];  A Sigma A^T = [[1 + 4, 0 + 8], [0 + 8, 0 + 16]] = [[5, 8], [8, 16]]
    a, b = t([[1, 1], [0, 2]]), t([0, 1])
    means, covs = t([[1, 0]]), t([[[1, 0], [0, 4]]])
    m2, c2 = adagauss.adapt_gaussians_linear(a, b, means, covs)
    assert torch.allclose(m2, t([[1, 1]])) and torch.allclose(c2, t([[[5, 8], [8, 16]]]))
    # the sampled adaptation (as released): with the same samples, the adapted sample statistics are exactly
    # A (sample mean) + b and A (sample covariance) A^T
    lin = torch.nn.Linear(2, 2).double()
    with torch.no_grad():
        lin.weight.copy_(a)
        lin.bias.copy_(b)
    sm, sc = adagauss.adapt_gaussians(lambda x: x, means, covs, n_samples=10000,
                                      generator=torch.Generator().manual_seed(1))
    am, ac = adagauss.adapt_gaussians(lin, means, covs, n_samples=10000, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(am, sm @ a.T + b) and torch.allclose(ac, a @ sc @ a.T)
    # ... and near the exact answer (the sample variance 16 has a standard error 16 sqrt(2 / 10^4) = 0.23)
    assert torch.allclose(am, m2, atol=0.1) and torch.allclose(ac, c2, atol=0.8)
    # with a shrink of 1 during adaptation: + mean(diag) I = + (5 + 16) / 2 I = + 10.5 I
    _, shr = adagauss.adapt_gaussians(lin, means, covs, shrink_alpha=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(shr, ac + 0.5 * torch.diagonal(ac, dim1=1, dim2=2).sum() * torch.eye(2, dtype=torch.float64))


def test_adapter_loss_and_training_loss():
    # identity adapter and equal features: MSE 0, only alpha L_AC remains (-0.933013 on the batch above)
    feats = t([[1, 1], [2, 3], [3, 2]])
    assert adagauss.adapter_loss(lambda x: x, feats, feats).item() == pytest.approx(-(1 + math.sqrt(0.75)) / 2)
    # training loss: CE 2 + 10 * MSE(distiller(f), f_old) + L_AC; distiller x -> x, f_old = f - 1 everywhere:
    #   MSE = 1, so 2 + 10 - 0.933013
    loss = adagauss.training_loss(torch.tensor(2.0, dtype=torch.float64), feats, feats - 1, lambda x: x)
    assert loss.item() == pytest.approx(12 - (1 + math.sqrt(0.75)) / 2)
    assert adagauss.training_loss(torch.tensor(2.0), feats, None, None, alpha=0).item() == 2.0


def test_bayes_classifier_distances_by_hand():
    # class A: mean (0, 0), Sigma [[1, .5], [.5, 1]]; class B: mean (3, 0), Sigma .25 I; x = (2, 2)
    # shrink 3 * mean(diag): A + 3 I = [[4, .5], [.5, 4]], B + .75 I = I
    # without normalisation: A^{-1} = [[4, -.5], [-.5, 4]] / 15.75
    #   D_A = (4 * 4 + 4 * 4 - 2 * .5 * 4) / 15.75 = 28 / 15.75 = 16/9;  D_B = 1 + 4 = 5
    means = t([[0, 0], [3, 0]])
    covs = t([[[1, 0.5], [0.5, 1]], [[0.25, 0], [0, 0.25]]])
    x = t([[2, 2]])
    assert torch.allclose(adagauss.bayes_distances(x, means, covs, normalize=False), t([[16 / 9, 5]]))
    # normalised (CIFAR-100's --normalize): A -> [[1, 1/8], [1/8, 1]], inverse 64/63 [[1, -1/8], [-1/8, 1]]; B -> I
    #   x -> (s, s); mean A (0, 0) stays 0; mean B -> (1, 0)
    #   D_A = 64/63 (s^2 + s^2 - 2/8 s^2) = 64/63 * 7/8 = 8/9;  D_B = (s - 1)^2 + s^2 = 2 - sqrt(2) = 0.585786
    assert torch.allclose(adagauss.bayes_distances(x, means, covs), t([[8 / 9, 2 - math.sqrt(2)]]))
    assert adagauss.mlp(4, 2)(torch.zeros(3, 4)).shape == (3, 4)
