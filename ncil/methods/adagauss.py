"""AdaGauss (Rypesc et al., "Task-recency bias strikes back: Adapting covariances in Exemplar-Free Class
Incremental Learning", NeurIPS 2024) as pure tensor functions (docs/efcil.md, section "AdaGauss").

Every class is a Gaussian N(mu_c, Sigma_c) in an S-dimensional latent space (S = 64: the ResNet-18's pooled
feature through a linear bottleneck). The backbone trains on every task with

    L = CE + lambda || distiller(f_t(x)) - f_{t-1}(x) ||^2 / S + alpha L_AC,     lambda = 10, alpha = 1

* the projected feature distillation: an MLP distiller S -> 32 S -> S (GELU) from the new to the old latent
  space, MSE (``distill_projected``);
* the anti-collapse loss on the batch's features: Sigma_B = cov(f(x_1..B)) = L L^T (Cholesky),
      L_AC = -1/S sum_i min(L_ii, beta),   beta = 1,
  which pushes the batch covariance towards full rank (its determinant is prod_i L_ii^2) and stops pushing
  once a diagonal entry reaches beta.

After task t (t > 0) an adapter (the same MLP shape) is trained on the current task's images to map old
features to new ones, MSE(adapter(f_{t-1}(x)), f_t(x)) + alpha L_AC(adapter(f_{t-1}(x))), and every old class's
Gaussian is carried through it: N = 10000 samples of N(mu_c, Sigma_c), passed through the adapter, give the new
mean and the new (unbiased) covariance. New classes get the mean and covariance of their training features
(and of their horizontal flips). Classification ("bayes") is the smallest Mahalanobis distance with every
matrix shrunk by 3 * mean(diag) I, then (``--normalize``, used for CIFAR-100) correlation-normalised, with
features and means L2-normalised.

Constants from the released code (grypesc/AdaGauss, ``src/approach/ada_gauss.py`` and
``scripts/cifar-10x10.sh``): S 64, N 10000, alpha 1, beta 1, lambda 10, MLP multiplier 32, shrink 0 while
training and 3 at evaluation; backbone SGD lr 0.1 (x 0.1 after the first task), momentum 0.9, weight decay
5e-4, batch 256, 200 epochs, steps at 30/60/90 % of them; adapter SGD lr 0.01, weight decay 5e-4, 100 epochs
(nepochs // 2), steps at 30/60/90; gradients clipped to norm 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ncil.methods.fecam import normalize_covariance, shrink_covariance

LATENT = 64  # S
ADAPT_SAMPLES = 10000  # N
AC_ALPHA = 1.0  # weight of the anti-collapse loss
AC_BETA = 1.0  # clamp of the Cholesky diagonal
KD_LAMBDA = 10.0  # weight of the projected distillation
MLP_MULTIPLIER = 32
TRAIN_SHRINK = 0.0  # --shrink (during training and adaptation)
EVAL_SHRINK = 3.0  # shrink of the matrices inverted for the Bayes classifier


def mlp(latent: int = LATENT, multiplier: int = MLP_MULTIPLIER) -> nn.Module:
    """The distiller's and the adapter's shape: Linear(S, mS), GELU, Linear(mS, S)."""
    return nn.Sequential(nn.Linear(latent, multiplier * latent), nn.GELU(), nn.Linear(multiplier * latent, latent))


def anti_collapse_loss(features: torch.Tensor, beta: float = AC_BETA) -> torch.Tensor:
    """L_AC = -mean_i min(L_ii, beta), L the Cholesky factor of the batch's unbiased covariance; features (B, S).

    The covariance must be positive definite (B > S and features not collapsed), as in the released code. On the
    CPU a covariance that is not is refused; on a GPU it is not checked (the check would be a host sync every step):
    the factor, and so the loss, is then NaN, which the task's logged loss shows.
    """
    if features.ndim != 2:
        raise ValueError(f"expected features (B, S), got {tuple(features.shape)}")
    chol, info = torch.linalg.cholesky_ex(batch_covariance(features))  # cholesky's factorisation, unchecked
    if features.device.type == "cpu" and int(info) != 0:
        raise ValueError(f"anti-collapse loss: the batch covariance of {tuple(features.shape)} latent vectors is not "
                         f"positive definite (order {int(info)} minor): the batch must exceed the latent width and "
                         f"the features must not collapse")
    return -torch.clamp(torch.diagonal(chol), max=beta).mean()


def batch_covariance(features: torch.Tensor) -> torch.Tensor:
    """torch.cov(features.T) (S, S), unbiased, computed by torch.cov's own steps (sum / B, centre, X Xᵀ, / (B - 1)) so
    the bits are its, without its check that B - 1 > 0 on the device (a host sync on a GPU); B > 1 is the caller's."""
    x = features.T  # (S, B): variables in rows, as torch.cov takes them
    n = x.shape[1]
    centred = x - (x.sum(1) / n).unsqueeze(1)
    return torch.mm(centred, centred.t()) / (n - 1)


def distill_projected(distiller, features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """MSE(distiller(f_t), f_{t-1}), the mean over B x S elements (the old features carry no gradient)."""
    return F.mse_loss(distiller(features), old_features.detach())


def training_loss(ce: torch.Tensor, features: torch.Tensor, old_features: torch.Tensor | None, distiller, *,
                  lamb: float = KD_LAMBDA, alpha: float = AC_ALPHA, beta: float = AC_BETA) -> torch.Tensor:
    """CE + lamb * projected distillation (tasks after the first) + alpha * L_AC."""
    loss = ce
    if old_features is not None:
        loss = loss + lamb * distill_projected(distiller, features, old_features)
    if alpha > 0:
        loss = loss + alpha * anti_collapse_loss(features, beta)
    return loss


def adapter_loss(adapter, old_features: torch.Tensor, new_features: torch.Tensor, *, alpha: float = AC_ALPHA,
                 beta: float = AC_BETA) -> torch.Tensor:
    """The adapter's objective on current images: MSE(adapter(f_{t-1}), f_t) + alpha L_AC(adapter(f_{t-1}))."""
    adapted = adapter(old_features.detach())
    loss = F.mse_loss(adapted, new_features.detach())
    return loss + alpha * anti_collapse_loss(adapted, beta) if alpha > 0 else loss


def shrink(cov: torch.Tensor, alpha1: float, alpha2: float = 0.0) -> torch.Tensor:
    """AdaGauss's shrink_cov: Sigma + alpha1 mean(diag) I + alpha2 mean(off-diagonal) (1 - I), on (..., S, S)."""
    return shrink_covariance(cov, alpha1, alpha2, offdiag="all")


def adapt_gaussians(adapter, means: torch.Tensor, covs: torch.Tensor, *, n_samples: int = ADAPT_SAMPLES,
                    shrink_alpha: float = TRAIN_SHRINK,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Old classes' Gaussians carried through the adapter: per class, n_samples of N(mu_c, Sigma_c) -> adapter ->
    their mean and unbiased covariance (shrunk by ``shrink_alpha``, 0 as released). Means (C, S), covs (C, S, S)."""
    if means.ndim != 2 or covs.shape != (means.shape[0], means.shape[1], means.shape[1]):
        raise ValueError(f"expected means (C, S) and covs (C, S, S), got {tuple(means.shape)} and {tuple(covs.shape)}")
    chol = torch.linalg.cholesky(covs)  # as MultivariateNormal(covariance_matrix=...): positive definite only
    new_means, new_covs = [], []
    with torch.no_grad():
        for c in range(means.shape[0]):
            z = torch.randn(n_samples, means.shape[1], generator=generator, dtype=means.dtype).to(means.device)
            adapted = adapter(means[c] + z @ chol[c].T)
            new_means.append(adapted.mean(0))
            new_covs.append(shrink(torch.cov(adapted.T), shrink_alpha))
    return torch.stack(new_means), torch.stack(new_covs)


def adapt_gaussians_linear(weight: torch.Tensor, bias: torch.Tensor | None, means: torch.Tensor,
                           covs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact (n_samples -> infinity) adaptation through a linear adapter x -> A x + b: (A mu + b, A Sigma A^T)."""
    new_means = means @ weight.T + (0 if bias is None else bias)
    return new_means, weight @ covs @ weight.T


def bayes_distances(x: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, *, shrink_alpha: float = EVAL_SHRINK,
                    normalize: bool = True) -> torch.Tensor:
    """AdaGauss's classifier distances (N, C): each Sigma_c shrunk by shrink_alpha * mean(diag) I, correlation-
    normalised and x, mu_c L2-normalised if ``normalize``, then (x - mu_c)^T Sigma_c^{-1} (x - mu_c)."""
    covs = shrink(covs, shrink_alpha)
    if normalize:
        covs = normalize_covariance(covs)
        x, means = F.normalize(x, dim=1), F.normalize(means, dim=1)
    inv = torch.linalg.inv(covs)
    diff = x[:, None, :] - means[None, :, :]
    return torch.einsum("ncd,cde,nce->nc", diff, inv, diff)
