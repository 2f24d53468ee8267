"""Supervised contrastive loss of the `official` preset (method-spec 4.2; from FCS, absent from the paper).

Queries are the current model's features of the 4B rotated standard views (with gradient); keys are the key
encoder's features of the 4B rotated strong views, in tasks t >= 1 followed by the 64 noisy raw old
prototypes p~ that protoAug drew (4.5; before the transfer layer), labelled 4c (``contrastive_keys``).

Normalisation, as in the released code: the queries and ALL keys (key-encoder features and appended
prototypes alike) are l2-normalised row by row inside ``supervised_contrastive``; pass raw features.
The keys carry no gradient (the code builds them under no_grad); the function detaches them.

Row i's similarity list is s_i = [q_i.k_i, q_i.k_1, .., q_i.k_m] / tau (so k_i appears twice), its positive
mask [1, 1(l_i == l_1), .., 1(l_i == l_m)] on the rotation-expanded labels (other rotations of the same
class are negatives), and

    loss_i = (1/|P_i|) sum_{p in P_i} log(1 + exp(-s_ip) sum_{n not in P_i} exp(s_in)),

averaged over the rows. Computed in float32 whatever the input dtype (|s| <= 1/tau, about 14.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ncil.methods.baseline import N_ROTATIONS

CONTRAST_TEMPERATURE = 0.07  # contrast_T, spec 4.2 / 4.8


def supervised_contrastive(
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_labels: torch.Tensor,
    key_labels: torch.Tensor,
    temperature: float = CONTRAST_TEMPERATURE,
) -> torch.Tensor:
    """L_con' (unweighted; the caller multiplies by lambda_con), a float32 scalar.

    queries (n, d) raw current-model features; keys (m, d) raw key features, m >= n, keys[i] is query i's own
    strong view (i < n); query_labels (n,), key_labels (m,) rotation-expanded labels 4y + k.
    """
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1] or keys.shape[0] < queries.shape[0]:
        raise ValueError(f"expected queries (n, d) and keys (m, d) with m >= n, got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if query_labels.shape != (queries.shape[0],) or key_labels.shape != (keys.shape[0],):
        raise ValueError(
            f"expected query_labels (n,) and key_labels (m,), got {tuple(query_labels.shape)} and {tuple(key_labels.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"contrastive temperature must be > 0, got {temperature!r}")
    n = queries.shape[0]
    q = F.normalize(queries.float(), dim=-1)  # (n, d)
    k = F.normalize(keys.detach().float(), dim=-1)  # (m, d)
    own = (q * k[:n]).sum(dim=-1, keepdim=True)  # (n, 1): q_i . k_i
    sims = torch.cat([own, q @ k.T], dim=1) / temperature  # (n, 1 + m)
    same = (query_labels.unsqueeze(1) == key_labels.to(query_labels.device).unsqueeze(0)).to(sims.dtype)  # (n, m)
    positive = torch.cat([torch.ones_like(own), same], dim=1)  # (n, 1 + m)
    neg_sum = ((1 - positive) * sims.exp()).sum(dim=1, keepdim=True)  # (n, 1)
    per_positive = torch.log1p(neg_sum * positive * (-sims).exp())  # (n, 1 + m); 0 on negatives
    per_row = per_positive.sum(dim=1) / positive.sum(dim=1)  # (n,)
    return per_row.mean()


def contrastive_keys(
    key_features: torch.Tensor,
    key_labels: torch.Tensor,
    proto_features: torch.Tensor | None = None,
    proto_classes: torch.Tensor | None = None,
    rotations: int = N_ROTATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and their labels (spec 4.2): key_features (n, d) with key_labels (n,), then (tasks t >= 1) the noisy
    raw prototypes proto_features (P, d) of classes proto_classes (P,) labelled rotations * c -> (n + P, d), (n + P,).
    """
    if (proto_features is None) != (proto_classes is None):
        raise ValueError("pass proto_features and proto_classes together, or neither")
    if proto_features is None:
        return key_features, key_labels
    feats = torch.cat([key_features, proto_features.to(device=key_features.device, dtype=key_features.dtype)])
    labels = torch.cat([key_labels, (rotations * proto_classes).to(device=key_labels.device, dtype=key_labels.dtype)])
    return feats, labels
