"""The exemplar-free benchmark methods' cores (issue 25; docs/efcil.md): FeCAM's shrunk Mahalanobis
classifier, the drift estimates of SDC, ADC and LDC, EFC's empirical feature matrix and penalty, AdaGauss's
covariance adaptation and anti-collapse loss, each on numbers worked by hand in the comments."""

import math

import pytest
import torch

from ncil.methods import fecam

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
