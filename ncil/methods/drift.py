"""Prototype drift compensation (docs/efcil.md, section "Drift compensation"): SDC, ADC and LDC as options
of one method, as pure tensor functions.

After task t the backbone has moved from F_{t-1} to F_t, and the stored prototypes mu_c (means of old classes'
features under F_{t-1}) no longer sit where F_t puts those classes. No old image is kept, so the drift is
estimated from the current task's images x_i, seen through both networks:

* SDC (Yu et al., CVPR 2020, Sec. 4 "Semantic drift compensation"): the displacement of every current
  sample, delta_i = F_t(x_i) - F_{t-1}(x_i), averaged with Gaussian weights of its old feature's distance
  to the prototype:
      w_ic = exp(-||F_{t-1}(x_i) - mu_c||^2 / (2 sigma^2)),   Delta_c = sum_i w_ic delta_i / sum_i w_ic.
  sigma = 0.3 (the released ADC/LDC configurations, ``exps/lwf.json``); the released ``displacement`` adds
  1e-5 to every weight, so a prototype far from all samples gets the plain mean displacement.
* ADC (Goswami et al., CVPR 2024, "Resurrecting old classes with new data"): the current samples nearest to
  mu_c under F_{t-1} are pushed towards mu_c by an adversarial attack on F_{t-1},
      x <- clamp(x - alpha g / ||g||),   g = grad_x MSE(F_{t-1}(x), mu_c),
  alpha = 25, 3 steps, the 100 nearest samples; the samples whose F_{t-1} feature then has mu_c as nearest
  prototype stand in for class c and Delta_c = mean(F_t(x_adv) - F_{t-1}(x_adv)). The released
  ``utils/attack.py`` divides g by the norm of the whole batch's gradient (``grad_norm="batch"``), not each
  sample's (``"sample"``), and clamps to the global min and max of the task's (normalised) training images;
  when no sample succeeds it uses the unperturbed nearest samples.
* LDC (Gomez-Villa et al., ECCV 2024, "Learnable drift compensation"): a bias-free linear projector P fitted
  on current data so that P F_{t-1}(x) ~ F_t(x) (MSE), then mu_c <- P mu_c. The released code
  (``LDC_supervised/models/lwf.py``) trains P (512 x 512, ``nn.Linear(bias=False)``) with Adam, lr 1e-3, 20
  epochs over the task's training loader (``fit_projector_adam``); ``fit_projector`` is the closed-form
  minimiser of the same objective (least squares, optionally ridge-regularised).

Shapes: N current samples, D feature dimensions, C old prototypes. A "model" is any callable images -> (N, D)
features; the caller puts it in eval mode.
"""

from __future__ import annotations

import math

import torch

SDC_SIGMA = 0.3  # released ADC/LDC configurations ("sigma": 0.3)
SDC_EPS = 1e-5  # added to every kernel weight in the released displacement()
ADC_ALPHA = 25.0  # step size ("alpha": 25)
ADC_STEPS = 3  # attack iterations ("adv_epoch": 3)
ADC_SAMPLES = 100  # nearest current samples per old prototype ("sample_limit": 100)
LDC_EPOCHS = 20  # projector training epochs (released LDC)
LDC_LR = 1e-3  # Adam learning rate (released LDC)
LDC_BATCH = 128  # the task loader's batch size (released LDC)
GRAD_NORMS = ("batch", "sample")
NCM_EPS = 1e-8  # added to a feature's norm before the NCM normalisation (released EPSILON)


def _check_pairs(old: torch.Tensor, new: torch.Tensor) -> None:
    if old.ndim != 2 or old.shape != new.shape:
        raise ValueError(f"expected old and new features of one shape (N, D), got {tuple(old.shape)} and {tuple(new.shape)}")


# --- SDC ----------------------------------------------------------------------------------------------


def sdc_weights(old_features: torch.Tensor, prototypes: torch.Tensor, sigma: float = SDC_SIGMA,
                eps: float = SDC_EPS) -> torch.Tensor:
    """Normalised kernel weights (C, N): w_ic = exp(-||z_i - mu_c||^2 / (2 sigma^2)) + eps, rows summing to 1."""
    sq = ((prototypes[:, None, :] - old_features[None, :, :]) ** 2).sum(-1)  # (C, N)
    w = torch.exp(-sq / (2 * sigma ** 2)) + eps
    return w / w.sum(1, keepdim=True)


def sdc_drift(old_features: torch.Tensor, new_features: torch.Tensor, prototypes: torch.Tensor,
              sigma: float = SDC_SIGMA, eps: float = SDC_EPS) -> torch.Tensor:
    """SDC's estimated drift (C, D) of each prototype from the current samples' displacements."""
    _check_pairs(old_features, new_features)
    return sdc_weights(old_features, prototypes, sigma, eps) @ (new_features - old_features)


def sdc_compensate(old_features, new_features, prototypes, sigma: float = SDC_SIGMA, eps: float = SDC_EPS):
    """The prototypes moved by SDC's drift: mu_c + Delta_c, (C, D)."""
    return prototypes + sdc_drift(old_features, new_features, prototypes, sigma, eps)


# --- ADC ----------------------------------------------------------------------------------------------


def nearest_samples(old_features: torch.Tensor, prototype: torch.Tensor, k: int = ADC_SAMPLES) -> torch.Tensor:
    """Indices of the min(k, N) samples whose old features are nearest to the prototype (D,), nearest first."""
    d = torch.linalg.vector_norm(old_features - prototype[None, :], dim=1)
    return torch.argsort(d, stable=True)[:k]


def adc_attack(old_model, images: torch.Tensor, prototypes: torch.Tensor, target: int, *,
               alpha: float = ADC_ALPHA, steps: int = ADC_STEPS, x_min=None, x_max=None,
               grad_norm: str = "batch") -> tuple[torch.Tensor, torch.Tensor]:
    """ADC's targeted attack: images moved so that old_model maps them onto prototypes[target].

    Returns the perturbed images and the success mask (N,): the nearest prototype (Euclidean, over all
    rows of ``prototypes``) of their old features is ``target``. A zero gradient leaves a sample where it is
    (the released code would divide by zero there).
    """
    if grad_norm not in GRAD_NORMS:
        raise ValueError(f"grad_norm: expected one of {GRAD_NORMS}, got {grad_norm!r}")
    proto = prototypes[target].detach()
    x = images.detach().clone()
    for _ in range(steps):
        with torch.enable_grad():
            x.requires_grad_(True)
            feats = old_model(x)
            loss = ((feats - proto[None, :]) ** 2).mean()  # nn.MSELoss()
            (g,) = torch.autograd.grad(loss, x)
        if grad_norm == "batch":
            norm = torch.linalg.vector_norm(g)  # the whole batch's gradient, as torch.norm(grad, keepdim=True)
        else:
            norm = torch.linalg.vector_norm(g.flatten(1), dim=1).view(-1, *([1] * (g.ndim - 1)))
        step = torch.where(norm > 0, g / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(g))
        x = x.detach() - alpha * step
        if x_min is not None or x_max is not None:
            x = torch.clamp(x, x_min, x_max)
    with torch.no_grad():
        nearest = torch.cdist(old_model(x), prototypes).argmin(1)
    return x.detach(), nearest == target


def mean_displacement(old_model, new_model, images: torch.Tensor) -> torch.Tensor:
    """mean_i (new_model(x_i) - old_model(x_i)), (D,)."""
    with torch.no_grad():
        return (new_model(images) - old_model(images)).mean(0)


def adc_compensate(old_model, new_model, images: torch.Tensor, prototypes: torch.Tensor, *,
                   alpha: float = ADC_ALPHA, steps: int = ADC_STEPS, k: int = ADC_SAMPLES,
                   x_min=None, x_max=None, grad_norm: str = "batch") -> torch.Tensor:
    """All old prototypes (C, D) moved by ADC's drift, from the current task's images (N, ...).

    Per class: the k nearest samples (old features), the attack towards the prototype, the successful
    samples (or, when none succeeds, the unperturbed nearest samples, as released), and the mean displacement
    between the new and the old model on them. ``x_min``/``x_max``: the released clamp bounds (the global
    minimum and maximum of the task's training images).
    """
    with torch.no_grad():
        old_feats = old_model(images)
    out = prototypes.clone()
    for c in range(prototypes.shape[0]):
        chosen = images[nearest_samples(old_feats, prototypes[c], k)]
        adv, ok = adc_attack(old_model, chosen, prototypes, c, alpha=alpha, steps=steps, x_min=x_min, x_max=x_max,
                             grad_norm=grad_norm)
        used = adv[ok] if bool(ok.any()) else chosen
        out[c] = prototypes[c] + mean_displacement(old_model, new_model, used)
    return out


# --- LDC ----------------------------------------------------------------------------------------------


def fit_projector(old_features: torch.Tensor, new_features: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """The bias-free linear map P (D, D) minimising sum_i ||P z_i^old - z_i^new||^2 (+ ridge ||P||_F^2).

    ridge = 0: the minimum-norm least-squares solution P^T = pinv(Z_old) Z_new; ridge > 0:
    P^T = (Z_old^T Z_old + ridge I)^{-1} Z_old^T Z_new.
    """
    _check_pairs(old_features, new_features)
    if ridge < 0:
        raise ValueError(f"ridge: expected >= 0, got {ridge}")
    if ridge == 0:
        return (torch.linalg.pinv(old_features) @ new_features).T
    gram = old_features.T @ old_features
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge * eye, old_features.T @ new_features).T


def fit_projector_adam(old_features: torch.Tensor, new_features: torch.Tensor, *, epochs: int = LDC_EPOCHS,
                       lr: float = LDC_LR, batch_size: int = LDC_BATCH,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """P (D, D) trained as the released LDC: nn.Linear(D, D, bias=False)'s initialisation
    (uniform in +-1/sqrt(D)), Adam, MSE(P z_old, z_new) per mini-batch of shuffled samples."""
    _check_pairs(old_features, new_features)
    n, d = old_features.shape
    bound = 1 / math.sqrt(d)
    weight = (torch.rand(d, d, generator=generator, dtype=old_features.dtype) * 2 - 1) * bound
    weight = weight.to(old_features.device).requires_grad_(True)
    opt = torch.optim.Adam([weight], lr=lr)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(old_features.device)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            with torch.enable_grad():
                loss = ((old_features[rows] @ weight.T - new_features[rows]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
            opt.step()
    return weight.detach()


def apply_projector(projector: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """LDC's compensated prototypes: P mu_c for every row, (C, D)."""
    return prototypes @ projector.T


# --- NCM: the classifier of the compensated prototypes --------------------------------------------------


def ncm_distances(features: torch.Tensor, prototypes: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Squared Euclidean distances (N, C) of features (N, D) to prototypes (C, D); with ``normalize`` (the released
    ADC/LDC evaluation, ``models/base.py`` ``_eval_ncm``) both are first L2-normalised (features / (||x|| + 1e-8),
    prototypes by ``F.normalize``), so the distance is 2 - 2 cos."""
    if normalize:
        features = features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + NCM_EPS)
        prototypes = torch.nn.functional.normalize(prototypes, p=2, dim=-1)
    return ((features[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)


def ncm_predict(features: torch.Tensor, prototypes: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Nearest class mean (N,): the row of ``prototypes`` nearest to each feature (``ncm_distances``; a tie goes to
    the lower row)."""
    if features.ndim != 2 or prototypes.ndim != 2 or features.shape[1] != prototypes.shape[1]:
        raise ValueError(f"expected features (N, D) and prototypes (C, D), got {tuple(features.shape)} and "
                         f"{tuple(prototypes.shape)}")
    return ncm_distances(features, prototypes, normalize).argmin(1)
