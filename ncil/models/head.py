"""A linear classifier that grows by whole classes and keeps its old rows bit-identical."""

from __future__ import annotations

import math

import torch
from torch import nn


class GrowingHead(nn.Module):
    """Linear d -> out with bias; ``grow`` appends freshly initialised rows (method-spec 3.4).

    New rows are Kaiming-uniform with linear gain, U(-sqrt(3/d), sqrt(3/d)); new biases are 0.
    """

    def __init__(self, in_features: int, out_features: int = 0):
        super().__init__()
        self.in_features = in_features
        self.weight = nn.Parameter(torch.empty(0, in_features))
        self.bias = nn.Parameter(torch.empty(0))
        if out_features:
            self.grow(out_features)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def grow(self, out_features: int) -> None:
        """Resize to ``out_features`` rows; rows 0..old-1 are copied unchanged."""
        old = self.out_features
        if out_features < old:
            raise ValueError(f"head can only grow: has {old} outputs, asked for {out_features}")
        bound = math.sqrt(3.0 / self.in_features)
        fresh = torch.empty(out_features - old, self.in_features, device=self.weight.device).uniform_(-bound, bound)
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), fresh]))
        self.bias = nn.Parameter(torch.cat([self.bias.detach(), torch.zeros(out_features - old, device=self.bias.device)]))

    @torch.no_grad()
    def regrow(self, keep: int, out_features: int) -> None:
        """Rebuild with ``out_features`` rows: rows 0..keep-1 copied unchanged, every other row fresh.

        The official preset's growth (method-spec 3.4): the previous task's mixup rows, which follow
        its real rows, are dropped and replaced by fresh rows (same init as ``grow``). ``grow`` is left
        as it was, so the paper preset's draws do not change.
        """
        if not 0 <= keep <= min(self.out_features, out_features):
            raise ValueError(f"keep: expected 0..min({self.out_features}, {out_features}) rows, got {keep}")
        bound = math.sqrt(3.0 / self.in_features)
        fresh = torch.empty(out_features - keep, self.in_features, device=self.weight.device).uniform_(-bound, bound)
        self.weight = nn.Parameter(torch.cat([self.weight.detach()[:keep], fresh]))  # (out, d)
        self.bias = nn.Parameter(torch.cat([self.bias.detach()[:keep],
                                            torch.zeros(out_features - keep, device=self.bias.device)]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(features, self.weight, self.bias)  # (B, out)
