"""Backbone plus growing head: the model a task trains and a checkpoint stores."""

from __future__ import annotations

import torch
from torch import nn

from ncil.config import ModelConfig
from ncil.models.head import GrowingHead
from ncil.models.vit import build_backbone


class IncrementalNet(nn.Module):
    def __init__(self, cfg: ModelConfig, in_chans: int, n_outputs: int = 0):
        super().__init__()
        self.backbone = build_backbone(cfg, in_chans)
        self.head = GrowingHead(self.backbone.feature_dim, n_outputs)

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, C, H, W) -> {"cls": (B, D), "patches": (B, N, D), "logits": (B, out)}."""
        cls, patches = self.backbone(x)
        return {"cls": cls, "patches": patches, "logits": self.head(cls)}


def build_network(cfg: ModelConfig, in_chans: int, n_outputs: int = 0) -> IncrementalNet:
    return IncrementalNet(cfg, in_chans, n_outputs)


def load_network(cfg: ModelConfig, in_chans: int, state: dict[str, torch.Tensor]) -> IncrementalNet:
    """Rebuild a network from a checkpoint's state dict (the head size is read from it)."""
    net = IncrementalNet(cfg, in_chans, n_outputs=int(state["head.weight"].shape[0]))
    net.load_state_dict(state)
    return net
