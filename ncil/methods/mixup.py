"""Mixup virtual classes of the `official` preset (method-spec 2.4; FCS/IL2A, absent from the paper).

Per step, ``rounds`` (4) times: a random permutation pi of the B unrotated standard views; the positions i
with y_i != y_pi(i) are kept; lambda ~ Beta(alpha, alpha) (alpha = 20), set to 0.5 outside [0.4, 0.6];
the mixed image lambda x_i + (1 - lambda) x_pi(i) gets the virtual label of the unordered pair
(``HeadLayout.virtual_labels``). The rounds are concatenated in order; mixed images are not rotated.

Randomness comes only from a ``torch.Generator``. ``torch.distributions.Beta`` cannot take one, so Beta is
drawn exactly from uniforms: for integer alpha, Gamma(alpha, 1) = sum of alpha Exp(1) variables, Exp(1) =
-log(1 - U), and G1 / (G1 + G2) ~ Beta(alpha, alpha) for independent G1, G2 ~ Gamma(alpha, 1). The uniforms
are float64 and ``-log1p(-U)`` is finite for U in [0, 1), so no lambda is ever NaN.

Draw order of ``mixup_batch`` (fixes the bytes; all from ``generator``, on its device), for each round r in
0..rounds-1:
  1. ``torch.randperm(B)``: the permutation pi;
  2. ``torch.rand((B, 2, alpha), float64)``: uniforms for one lambda per position i (all B positions, kept
     or not, so the number of draws does not depend on the labels); position i uses [i, 0, :] for G1 and
     [i, 1, :] for G2.

Static shapes (``runtime.static_shapes``, issue 21): ``mixup_batch(..., static=True)`` takes the same draws in
the same order but returns all R * B candidate rows (round-major, as the compacted rows are ordered) with a
0/1 ``keep`` mask, so the batch has the same size every step and nothing is read back from the device. A
dropped row (y_i = y_pi(i)) still holds the mixed image and a valid column as its label
(``DROPPED_LABEL``); every loss over the rows averages over the kept ones only (``pks.masked_mean``).
"""

from __future__ import annotations

import torch

from ncil.methods.head_layout import HeadLayout

MIXUP_ALPHA = 20  # Beta(20, 20), spec 2.4 / 4.8
MIXUP_ROUNDS = 4  # mix_time
MIXUP_CLAMP = (0.4, 0.6)  # lambda outside this range ...
MIXUP_FALLBACK = 0.5  # ... is replaced by 0.5
DROPPED_LABEL = 0  # static shapes: the label of a dropped candidate row, any valid head column (masked out)


def beta_symmetric(alpha: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) for a positive integer alpha, float64 (n,), on the generator's device.

    One ``torch.rand((n, 2, alpha), float64)`` draw: G_k = sum_j -log1p(-U[:, k, j]) ~ Gamma(alpha, 1), and
    the result is G_0 / (G_0 + G_1), exact in distribution.
    """
    if not isinstance(alpha, int) or isinstance(alpha, bool) or alpha < 1:
        raise ValueError(f"mixup alpha must be a positive integer (exact Gamma sums), got {alpha!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    u = torch.rand((n, 2, alpha), generator=generator, dtype=torch.float64, device=generator.device)  # (n, 2, alpha)
    gammas = (-torch.log1p(-u)).sum(dim=2)  # (n, 2), each ~ Gamma(alpha, 1)
    return gammas[:, 0] / gammas.sum(dim=1)  # (n,)


def clamp_lambdas(lam: torch.Tensor, clamp: tuple[float, float] = MIXUP_CLAMP, fallback: float = MIXUP_FALLBACK) -> torch.Tensor:
    """lambda outside [clamp[0], clamp[1]] -> fallback (spec 2.4 step 3: outside [0.4, 0.6] -> 0.5); same shape."""
    low, high = clamp
    return torch.where((lam < low) | (lam > high), torch.full_like(lam, fallback), lam)


def mix_round(
    x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, layout: HeadLayout, *, validate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mixup round with given draws (pure): x (B, C, H, W), y (B,), perm (B,), lam (B,) -> (M, C, H, W), (M,).

    Keeps the positions i (ascending) with y[i] != y[perm[i]]; row m of the result is
    lam[i] * x[i] + (1 - lam[i]) * x[perm[i]] (lam cast to x's dtype first) with label
    ``layout.virtual_labels(y[i], y[perm[i]])``. lam is used as given (clamp it before). ``validate=False``
    skips the label-range check (a device sync), for callers that checked y already.
    """
    if x.ndim != 4 or y.shape != (x.shape[0],) or perm.shape != y.shape or lam.shape != y.shape:
        raise ValueError(
            f"expected x (B, C, H, W), y (B,), perm (B,), lam (B,), got {tuple(x.shape)}, {tuple(y.shape)}, "
            f"{tuple(perm.shape)}, {tuple(lam.shape)}"
        )
    return mix_rounds(x, y, perm.unsqueeze(0), lam.unsqueeze(0), layout, validate=validate)


def mix_rounds(
    x: torch.Tensor, y: torch.Tensor, perms: torch.Tensor, lams: torch.Tensor, layout: HeadLayout, *, validate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mix_round`` for R rounds at once, concatenated in round order: perms (R, B), lams (R, B).

    The kept (round, position) pairs are found with one ``nonzero`` (the step's one device sync: the number of
    mixed rows is data-dependent); the rows are gathered by index, so every value is the one ``mix_round``
    computes round by round.
    """
    n = y.shape[0]
    perms = perms.to(y.device)
    keep = (y[perms] != y).reshape(-1)  # (R * B,) bool, round-major
    kept = keep.nonzero().squeeze(1)  # (M,) flat (round, position) indices, ascending
    rows, partners = kept % n, perms.reshape(-1).index_select(0, kept)  # (M,) positions i and pi(i)
    rows_x, partners_x = rows.to(x.device), partners.to(x.device)
    first, second = x.index_select(0, rows_x), x.index_select(0, partners_x)  # (M, C, H, W) each
    lam_k = lams.to(device=x.device, dtype=x.dtype).reshape(-1).index_select(0, kept.to(x.device)).view(-1, 1, 1, 1)
    mixed = lam_k * first + (1 - lam_k) * second  # (M, C, H, W)
    return mixed, layout.virtual_labels(y.index_select(0, rows), y.index_select(0, partners), validate=validate)


def mix_rounds_static(
    x: torch.Tensor, y: torch.Tensor, perms: torch.Tensor, lams: torch.Tensor, layout: HeadLayout
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mix_rounds`` without compaction (pure): perms (R, B), lams (R, B) -> every candidate row
    (R * B, C, H, W), labels (R * B,) int64, keep (R * B,) bool; round-major, row r * B + i for position i of
    round r.

    Row r * B + i is lam[r, i] * x[i] + (1 - lam[r, i]) * x[perms[r, i]] (the arithmetic of ``mix_rounds``);
    keep says y[i] != y[perms[r, i]]. The rows with keep, in order, are ``mix_rounds``'s rows; a dropped
    row's label is ``DROPPED_LABEL``. No data-dependent shape, no host sync (the labels are not validated:
    the caller checks them once, ``check_labels``).
    """
    n = y.shape[0]
    perms = perms.to(y.device)
    partners = perms.reshape(-1)  # (R * B,) pi(i), round-major
    rows = torch.arange(n, device=y.device).repeat(perms.shape[0])  # (R * B,) i
    y1, y2 = y.index_select(0, rows), y.index_select(0, partners)  # (R * B,) each
    keep = y1 != y2  # (R * B,) bool
    first, second = x.index_select(0, rows.to(x.device)), x.index_select(0, partners.to(x.device))  # (R * B, C, H, W)
    lam = lams.to(device=x.device, dtype=x.dtype).reshape(-1).view(-1, 1, 1, 1)  # (R * B, 1, 1, 1)
    mixed = lam * first + (1 - lam) * second  # (R * B, C, H, W)
    labels = torch.where(keep, layout.virtual_labels(y1, y2, validate=False), DROPPED_LABEL)  # (R * B,)
    return mixed, labels, keep


def check_labels(y: torch.Tensor, layout: HeadLayout) -> None:
    """Mixup labels must be current-task labels in [K_old, K_tot) (one device sync; once per task will do)."""
    if y.numel():
        lo, hi = torch.stack(torch.aminmax(y)).tolist()
        if lo < layout.n_old or hi >= layout.n_total:
            raise ValueError(f"mixup labels must be current-task labels in [{layout.n_old}, {layout.n_total}), got [{lo}, {hi}]")


def mixup_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    layout: HeadLayout,
    generator: torch.Generator,
    *,
    rounds: int = MIXUP_ROUNDS,
    alpha: int = MIXUP_ALPHA,
    clamp: tuple[float, float] = MIXUP_CLAMP,
    fallback: float = MIXUP_FALLBACK,
    validate: bool = True,
    static: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup virtual-class images of one batch (spec 2.4): x (B, C, H, W) normalised, unrotated standard views,
    y (B,) incremental labels of the current task -> x_mix (M, C, H, W), y_mix (M,) int64.

    M = number of kept positions summed over the rounds (about 4B (1 - p_same)); the labels lie in
    ``layout.mixup_columns``. See the module docstring for the draw order. The caller appends these rows
    after the 4B rotated views (``rotate_batch``). ``validate=False`` skips ``check_labels`` (a device sync)
    for a caller that checked the task's labels once. ``static=True`` (static shapes): the same draws, and
    (x_mix (R * B, C, H, W), y_mix (R * B,), keep (R * B,) bool) from ``mix_rounds_static``.
    """
    if rounds < 0:
        raise ValueError(f"mixup rounds must be >= 0, got {rounds!r}")
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x (B, C, H, W) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if validate:
        check_labels(y, layout)
    if not rounds:
        empty = x.new_empty((0, *x.shape[1:])), torch.empty(0, dtype=torch.int64, device=y.device)
        return (*empty, torch.empty(0, dtype=torch.bool, device=y.device)) if static else empty
    n = x.shape[0]
    perms, lams = [], []
    for _ in range(rounds):  # the documented draw order: per round the permutation, then its lambdas
        perms.append(torch.randperm(n, generator=generator, device=generator.device))  # (B,)
        lams.append(clamp_lambdas(beta_symmetric(alpha, n, generator), clamp, fallback))  # (B,) float64
    if static:
        return mix_rounds_static(x, y, torch.stack(perms), torch.stack(lams), layout)
    return mix_rounds(x, y, torch.stack(perms), torch.stack(lams), layout, validate=False)
