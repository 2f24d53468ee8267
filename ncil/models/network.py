"""Backbone plus growing head: the model a task trains and a checkpoint stores."""

from __future__ import annotations

import torch
from torch import nn

from ncil.models.head import GrowingHead
from ncil.models.resnet import has_batch_norm
from ncil.models.vit import ViT
from ncil.pipeline.config import ModelConfig


class IncrementalNet(nn.Module):
    def __init__(self, cfg: ModelConfig, in_chans: int, n_outputs: int = 0, backbone: str = "vit"):
        super().__init__()
        self.backbone = build_backbone(cfg, in_chans, backbone)
        self.head = GrowingHead(self.backbone.feature_dim, n_outputs)
        self.batch_norm = has_batch_norm(self.backbone)  # train-mode outputs depend on the whole batch

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def forward(self, x: torch.Tensor, row_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x (B, C, H, W) -> {"cls": (B, D), "patches": (B, N, D), "logits": (B, out)}.

        ``row_mask`` (B,) of 0/1 (static shapes, issue 21): the rows with 0 only hold their place. A backbone
        without BatchNorm works row by row and ignores it; a BatchNorm one (resnet18, hybrid) takes its batch
        statistics over the rows with 1 (``ncil.models.resnet.masked_forward``).
        """
        if row_mask is None or not self.batch_norm:
            cls, patches = self.backbone(x)
        else:
            cls, patches = self.backbone(x, row_mask=row_mask)
        return {"cls": cls, "patches": patches, "logits": self.head(cls)}


def build_backbone(cfg: ModelConfig, in_chans: int, backbone: str = "vit") -> nn.Module:
    """``vit``: the paper's ViT sized by ``cfg``; ``resnet18``: PASS's CIFAR-stem ResNet-18 (the ImageNet stem
    from 128 pixels); ``hybrid``: the released code's ResNet-18 + 0.1 x ConViT (method-spec 3.1), sized by ``cfg``
    and ``cfg.resnet_width``."""
    if backbone == "vit":
        return ViT(cfg, in_chans)
    if backbone == "resnet18":
        from ncil.models.resnet import ResNet18

        return ResNet18(in_chans, cfg.img_size)
    if backbone == "hybrid":
        from ncil.models.hybrid import HybridBackbone

        return HybridBackbone(cfg, in_chans)
    raise ValueError(f"backbone: expected vit, resnet18 or hybrid, got {backbone!r}")


def build_network(cfg: ModelConfig, in_chans: int, n_outputs: int = 0, backbone: str = "vit") -> IncrementalNet:
    return IncrementalNet(cfg, in_chans, n_outputs, backbone)


def load_network(
    cfg: ModelConfig, in_chans: int, state: dict[str, torch.Tensor], backbone: str = "vit"
) -> IncrementalNet:
    """Rebuild a network from a checkpoint's state dict (the head size is read from it).

    ``backbone`` dytox: a ``ncil.models.dytox.DyToxNet`` (its tasks read from its classifiers), whose output's
    "logits" are every seen class's in class order, as an ``IncrementalNet``'s.
    """
    if backbone == "dytox":
        from ncil.models.dytox import load_dytox

        return load_dytox(cfg, in_chans, state)
    net = IncrementalNet(cfg, in_chans, n_outputs=int(state["head.weight"].shape[0]), backbone=backbone)
    net.load_state_dict(state)
    return net
