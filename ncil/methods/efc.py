"""Elastic Feature Consolidation: EFC (Magistri et al., ICLR 2024) and EFC++ (Magistri et al., arXiv 2503.10439)
as pure tensor functions (docs/efcil.md, section "EFC and EFC++").

The backbone keeps training on every task; its feature drift is penalised along the directions that matter
to the previous model's predictions. With f the backbone feature (D,), the previous model's linear heads
W (K, D) (all old heads concatenated; biases do not enter) and p = softmax(W f + b):

* Jacobian of the log-probabilities w.r.t. the feature (paper Sec. 4.1, "Empirical feature matrix"):
      J_k = d log p_k / d f = W_k - sum_j p_j W_j,    i.e. J = (I - 1 p^T) W   (K, D)
* Empirical feature matrix, the expectation over the task's samples x and over y ~ p(y | x):
      E = 1/N sum_x sum_k p_k J_k^T J_k = 1/N sum_x W^T (diag p - p p^T) W      (D, D, positive semi-definite)
  (the released ``empirical_feature_matrix.py`` computes the same closed form, per batch, with the model in
  eval mode on the task's *training* loader, i.e. augmented images, dropping the last incomplete batch).
* The regulariser on the current batch (paper "Elastic feature consolidation" loss):
      L_EFM = mean_x (f_t(x) - f_{t-1}(x))^T (lambda_EFM E + eta I) (f_t(x) - f_{t-1}(x))
  lambda_EFM = 10, eta = 0.1 (the damping; released defaults ``--efc_lamb 10 --efc_damping 0.1``).
* Prototype update after each task (paper Sec. 4.3, EFM-weighted drift): SDC's Gaussian-kernel drift with the
  distance measured in the EFM norm, d_ic = -(z_i - mu_c)^T E (z_i - mu_c), min-max scaled over *all*
  prototypes and samples together, w_ic = exp(s_ic / (2 sigma^2)), sigma = 0.2 (``--efc_protoupdate 0.2``).
* EFC's PR-ACE (Prototype Replay Asymmetric Cross-Entropy): the current batch is classified by the current
  task's head alone; Gaussian pseudo-features of old classes (class mean and covariance + 1e-5 I), together
  with the previous batch of current samples, by all heads.
* EFC++ replaces PR-ACE by prototype re-balancing after the backbone's training: the heads alone, trained on
  the current features plus Gaussian samples of every old class (as many as the class had images), SGD
  lr 1e-3, momentum 0.9, weight decay 5e-4, batch 256, 50 epochs (released ``--balanced_*`` defaults).

Shapes: B batch rows, N samples, D feature dimensions, K classes seen by the heads, C prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EFC_LAMBDA = 10.0  # lambda_EFM (--efc_lamb)
EFC_ETA = 0.1  # damping eta (--efc_damping)
EFC_SIGMA = 0.2  # kernel width of the prototype update (--efc_protoupdate)
GAUSSIAN_JITTER = 1e-5  # added to the class covariances before sampling (released ProtoGenerator)
PROTO_BATCH = 64  # EFC: prototypes sampled per step (--efc_protobatchsize)
REBALANCE_BATCH = 256  # EFC++ re-balancing batch size
REBALANCE_EPOCHS = 50  # EFC++ re-balancing epochs
REBALANCE_LR = 1e-3  # EFC++ re-balancing learning rate (SGD, momentum 0.9, weight decay 5e-4)


def _probs(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if features.ndim != 2 or weight.ndim != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(f"expected features (N, D) and weight (K, D), got {tuple(features.shape)} and {tuple(weight.shape)}")
    return torch.softmax(F.linear(features, weight, bias), dim=1)


def log_softmax_jacobian(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """d log p_k / d f for every sample, (N, K, D): W_k - sum_j p_j W_j."""
    p = _probs(features, weight, bias)  # (N, K)
    return weight[None, :, :] - (p @ weight)[:, None, :]


def empirical_feature_matrix(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """EFC's empirical feature matrix (D, D) of the previous model's heads over N features (N, D)."""
    p = _probs(features, weight, bias)  # (N, K)
    middle = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, K, K): diag p - p p^T
    return weight.T @ middle.mean(0) @ weight


def efm_penalty(features: torch.Tensor, old_features: torch.Tensor, efm: torch.Tensor,
                lam: float = EFC_LAMBDA, eta: float = EFC_ETA) -> torch.Tensor:
    """L_EFM: the batch mean of delta^T (lam E + eta I) delta, delta = f_t - f_{t-1}, (B, D) each."""
    if features.ndim != 2 or features.shape != old_features.shape or efm.shape != (features.shape[1],) * 2:
        raise ValueError(f"expected features and old_features (B, D) and efm (D, D), got {tuple(features.shape)}, "
                         f"{tuple(old_features.shape)}, {tuple(efm.shape)}")
    delta = features - old_features
    eye = torch.eye(efm.shape[0], dtype=efm.dtype, device=efm.device)
    return torch.einsum("bd,de,be->b", delta, lam * efm + eta * eye, delta).mean()


def efm_drift(old_features: torch.Tensor, new_features: torch.Tensor, prototypes: torch.Tensor, efm: torch.Tensor,
              sigma: float = EFC_SIGMA) -> torch.Tensor:
    """EFC's prototype drift (C, D): kernel weights of the EFM distances, min-max scaled over all (c, i)."""
    if old_features.ndim != 2 or old_features.shape != new_features.shape:
        raise ValueError(f"expected old and new features (N, D), got {tuple(old_features.shape)} and {tuple(new_features.shape)}")
    diff = old_features[None, :, :] - prototypes[:, None, :]  # (C, N, D)
    d = -torch.einsum("cnd,de,cne->cn", diff, efm, diff)
    span = d.max() - d.min()
    scaled = (d - d.min()) / torch.where(span > 0, span, torch.ones_like(span))  # released: no guard for span 0
    w = torch.exp(scaled / (2 * sigma ** 2))
    return (w / w.sum(1, keepdim=True)) @ (new_features - old_features)


def sample_gaussians(means: torch.Tensor, covs: torch.Tensor, counts, *, jitter: float = GAUSSIAN_JITTER,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """counts[c] samples of N(means[c], covs[c] + jitter I) for every class: features (sum counts, D), class
    indices (sum counts,). Seeded through ``generator`` (the released code uses MultivariateNormal.sample)."""
    d = means.shape[1]
    eye = torch.eye(d, dtype=means.dtype, device=means.device)
    chol = torch.linalg.cholesky(covs + jitter * eye)  # (C, D, D)
    feats, labels = [], []
    for c, n in enumerate(counts):
        n = int(n)
        z = torch.randn(n, d, generator=generator, dtype=means.dtype).to(means.device)
        feats.append(means[c] + z @ chol[c].T)
        labels.append(torch.full((n,), c, dtype=torch.long, device=means.device))
    return torch.cat(feats), torch.cat(labels)


def pr_ace_loss(current_logits: torch.Tensor, current_targets: torch.Tensor, task_start: int,
                replay_logits: torch.Tensor, replay_targets: torch.Tensor) -> torch.Tensor:
    """EFC's PR-ACE: cross-entropy of the current batch over the current task's logits only (columns
    task_start:, targets shifted by task_start), plus cross-entropy over all K logits of the replayed rows
    (Gaussian pseudo-features of old classes and the previous batch of current samples)."""
    current = F.cross_entropy(current_logits[:, task_start:], current_targets - task_start)
    return current + F.cross_entropy(replay_logits, replay_targets)
