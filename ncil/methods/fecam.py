"""FeCAM's classifier (Goswami et al., NeurIPS 2023; docs/efcil.md, section "FeCAM"), as pure tensor functions.

FeCAM trains the backbone on the first task only and freezes it. Every class c (of every task) keeps its
prototype mu_c and one covariance matrix Sigma_c of the frozen features; a test feature goes to the class of
the smallest Mahalanobis distance

    D_M(x, c) = (x - mu_c)^T Sigma_c^{-1} (x - mu_c)

with three corrections of the raw statistics (paper Sec. 4, "Covariance shrinkage", "Correlation
normalization", "Tukey's transformation"):

* Tukey's ladder of powers on every feature: x -> x^lambda (lambda != 0), log x (lambda = 0); lambda = 0.5.
  The features are ReLU outputs (non-negative), so the power is real.
* Shrinkage: Sigma_s = Sigma + gamma1 V1 I + gamma2 V2 (1 - I), V1 the mean of the diagonal of Sigma
  (the mean variance), V2 the mean of its off-diagonal entries; gamma1 = gamma2 = 1.
* Correlation normalisation: Sigma_ij / (sigma_i sigma_j), sigma_i = sqrt(Sigma_ii), so every class's matrix
  has a unit diagonal and distances of different classes are comparable.

What the released code (dipamgoswami/FeCAM, ``models/base.py``, ``utils/maha_utils.py``,
``exps/FeCAM_cifar100.json``) does, and these functions follow by default:

* the covariance of class c is ``np.cov`` (the unbiased N - 1 estimate) of the Tukey-transformed *raw*
  features of its training images (test-mode transform, no augmentation);
* it is shrunk twice (once in ``compute_new_cov``, once more into ``_cov_mat_shrink``; the code's comment:
  "we apply covariance shrinkage 2 times to obtain better estimates of matrices"), then normalised;
* V2 is the mean of the off-diagonal entries that are not exactly zero (``mask = off_diag != 0``); on real
  features no entry is exactly zero and the two readings agree (``offdiag="all"`` is the paper's);
* the prototype is the mean of the raw (untransformed) features; the Tukey transform is applied to that mean
  at distance time;
* at test time x is L2-normalised, Tukey-transformed, and then x and the transformed prototype are each
  L2-normalised again before the difference; the inverse is ``torch.linalg.pinv``.

Shapes: N samples, D feature dimensions, C classes. Everything works in the dtype it is given (use float64
for hand-checked numbers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TUKEY_LAMBDA = 0.5  # lambda of Tukey's ladder (paper; released "beta": 0.5)
GAMMA1 = 1.0  # shrinkage of the diagonal (released "alpha1": 1)
GAMMA2 = 1.0  # shrinkage of the off-diagonal (released "alpha2": 1)
SHRINK_TIMES = 2  # the released code shrinks each class matrix twice
VIT_GAMMA2 = 0.0  # the released ViT scripts: alpha2 = 0, one shrinkage, no Tukey
NORM_EPS = 1e-8  # the released test-time normalisation x / (||x|| + 1e-8)
OFFDIAG_MEANS = ("nonzero", "all")


def tukey(x: torch.Tensor, lam: float = TUKEY_LAMBDA) -> torch.Tensor:
    """Tukey's ladder of powers, element-wise: x**lam for lam != 0, log(x) for lam == 0. x must be >= 0."""
    if bool((x < 0).any()):
        raise ValueError("tukey: features must be non-negative (FeCAM applies it to ReLU outputs)")
    return torch.log(x) if lam == 0 else torch.pow(x, lam)


def class_statistics(features: torch.Tensor, labels: torch.Tensor, classes) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean (C, D) and unbiased covariance (C, D, D) of features (N, D), in the order of ``classes``.

    Each class needs at least two samples (the N - 1 of the unbiased estimate, as ``np.cov``).
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"expected features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}")
    means, covs = [], []
    for c in classes:
        rows = features[labels == int(c)]
        if rows.shape[0] < 2:
            raise ValueError(f"class {int(c)}: {rows.shape[0]} sample(s), a covariance needs at least 2")
        centred = rows - rows.mean(0, keepdim=True)
        means.append(rows.mean(0))
        covs.append(centred.T @ centred / (rows.shape[0] - 1))
    return torch.stack(means), torch.stack(covs)


def _offdiag_mask(d: int, device) -> torch.Tensor:
    return ~torch.eye(d, dtype=torch.bool, device=device)


def shrink_covariance(cov: torch.Tensor, gamma1: float = GAMMA1, gamma2: float = GAMMA2, *,
                      offdiag: str = "nonzero") -> torch.Tensor:
    """Sigma + gamma1 V1 I + gamma2 V2 (1 - I) on (..., D, D).

    V1: the mean of the diagonal. V2: the mean of the off-diagonal entries, over those not exactly zero
    (``offdiag="nonzero"``, the released code) or over all D(D - 1) of them (``"all"``, the paper's words).
    A matrix with no non-zero off-diagonal entry gets V2 = 0 (the released code would divide 0 by 0).
    """
    if offdiag not in OFFDIAG_MEANS:
        raise ValueError(f"offdiag: expected one of {OFFDIAG_MEANS}, got {offdiag!r}")
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"expected square matrices (..., D, D), got {tuple(cov.shape)}")
    d = cov.shape[-1]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    off = _offdiag_mask(d, cov.device)
    v1 = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)  # (...)
    off_values = cov * off  # diagonal zeroed
    if offdiag == "all":
        v2 = off_values.sum((-2, -1)) / max(d * (d - 1), 1)
    else:
        count = (off_values != 0).sum((-2, -1)).to(cov.dtype)
        v2 = off_values.sum((-2, -1)) / count.clamp(min=1)
    return cov + gamma1 * v1[..., None, None] * eye + gamma2 * v2[..., None, None] * (1 - eye)


def normalize_covariance(cov: torch.Tensor) -> torch.Tensor:
    """Correlation normalisation on (..., D, D): Sigma_ij / (sigma_i sigma_j)."""
    sd = torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1))  # (..., D)
    return cov / (sd[..., :, None] * sd[..., None, :])


def fecam_statistics(features: torch.Tensor, labels: torch.Tensor, classes, *, lam: float | None = TUKEY_LAMBDA,
                     gamma1: float = GAMMA1, gamma2: float = GAMMA2, shrink_times: int = SHRINK_TIMES,
                     normalize: bool = True, offdiag: str = "nonzero") -> tuple[torch.Tensor, torch.Tensor]:
    """What FeCAM stores for new classes: prototypes (C, D), the mean raw feature, and matrices (C, D, D).

    Matrix of class c: the unbiased covariance of tukey(raw features), shrunk ``shrink_times`` times
    (released: 2; the paper describes one shrinkage), then correlation-normalised if ``normalize``.
    ``lam=None`` skips the Tukey transform: the released ViT scripts (``FeCAM_vit_cifar100.py``: pre-trained
    ViT-B/16 [CLS] features, L2-normalised, which can be negative) shrink once with gamma2 = 0 and no Tukey.
    """
    if shrink_times < 0:
        raise ValueError(f"shrink_times: expected >= 0, got {shrink_times}")
    means, _ = class_statistics(features, labels, classes)
    _, covs = class_statistics(features if lam is None else tukey(features, lam), labels, classes)
    for _ in range(shrink_times):
        covs = shrink_covariance(covs, gamma1, gamma2, offdiag=offdiag)
    if normalize:
        covs = normalize_covariance(covs)
    return means, covs


def mahalanobis(x: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, *,
                inverse: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Mahalanobis distances (N, C) of x (N, D) to C Gaussians: (x - mu_c)^T pinv(Sigma_c) (x - mu_c).

    ``inverse``: ``torch.linalg.pinv(covs)`` computed once by the caller (evaluation in batches), else here.
    """
    if x.ndim != 2 or means.ndim != 2 or covs.shape != (means.shape[0], means.shape[1], means.shape[1]) \
            or x.shape[1] != means.shape[1]:
        raise ValueError(f"expected x (N, D), means (C, D), covs (C, D, D); got {tuple(x.shape)}, "
                         f"{tuple(means.shape)}, {tuple(covs.shape)}")
    inv = torch.linalg.pinv(covs) if inverse is None else inverse  # (C, D, D); pinv as the released code
    diff = x[:, None, :] - means[None, :, :]  # (N, C, D)
    return torch.einsum("ncd,cde,nce->nc", diff, inv, diff)


def fecam_distances(x: torch.Tensor, prototypes: torch.Tensor, covs: torch.Tensor, *,
                    lam: float | None = TUKEY_LAMBDA, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """FeCAM's test-time distances (N, C) of raw features x (N, D), as the released ``_eval_maha``.

    x -> x / (||x|| + 1e-8) -> tukey -> L2-normalised; prototype -> tukey -> L2-normalised; then
    ``mahalanobis``. ``lam=None`` skips the Tukey transform (the released code skips it after the first task
    only, where it uses the head's weights with identity matrices).
    """
    x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + NORM_EPS)
    p = prototypes
    if lam is not None:
        x, p = tukey(x, lam), tukey(p, lam)
    return mahalanobis(F.normalize(x, dim=1), F.normalize(p, dim=1), covs, inverse=inverse)


def fecam_predict(x: torch.Tensor, prototypes: torch.Tensor, covs: torch.Tensor, *,
                  lam: float | None = TUKEY_LAMBDA, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """Index (N,) of the class of the smallest FeCAM distance (the first on ties)."""
    return fecam_distances(x, prototypes, covs, lam=lam, inverse=inverse).argmin(1)
