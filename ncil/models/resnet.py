"""ResNet-18 with the CIFAR stem (PASS's backbone; Table 3's first row), from torchvision parts.

The stem is a 3x3 stride-1 convolution without max-pooling (method-spec 3.1, item 1). ``forward``
returns the globally pooled feature (B, 512) as the prototype space and the stage-4 positions
(B, h*w, 512) as "patches", the same contract as the ViT.
"""

from __future__ import annotations

import torch
from torch import nn


class ResNet18(nn.Module):
    def __init__(self, in_chans: int):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4)

    @property
    def feature_dim(self) -> int:
        return 512

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.body(x)  # (B, 512, h, w)
        patches = fmap.flatten(2).transpose(1, 2)  # (B, h*w, 512), row-major positions
        return patches.mean(1), patches  # (B, 512), (B, h*w, 512)
