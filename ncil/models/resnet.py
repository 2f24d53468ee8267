"""ResNet-18 with the CIFAR stem (PASS's backbone; Table 3's first row), from torchvision parts.

The stem is a 3x3 stride-1 convolution without max-pooling (method-spec 3.1, item 1); for inputs of at least
``IMAGENET_STEM_MIN_SIZE`` pixels (ImageNet-Subset's 224) torchvision's ImageNet stem, a 7x7 stride-2 convolution
and a 3x3 stride-2 max-pool, as the exemplar-free papers' ImageNet-Subset ResNet-18 and the released hybrid's
ResNet (``ncil.models.hybrid``) use. ``forward``
returns the globally pooled feature (B, 512) as the prototype space and the stage-4 positions
(B, h*w, 512) as "patches", the same contract as the ViT.

Static shapes (``runtime.static_shapes``, issue 21): a training batch may carry rows that only hold their
place (the official step's dropped mixup candidates, method-spec 2.4). ``row_mask`` (B,) of 0/1 marks the rows
that count; ``masked_forward`` runs a BatchNorm network so that in train mode every batch statistic and
running-statistic update is taken over the counted rows only, as if the other rows were not in the batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm layer (its train-mode outputs then depend on the whole batch)."""
    return any(isinstance(m, _BatchNorm) for m in module.modules())


def masked_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """``bn(x)`` over the rows with ``row_mask`` 1 only: x (B, C, H, W), row_mask (B,) of 0 and 1 -> (B, C, H, W).

    Train mode: the mean and biased variance per channel over the counted rows' B_c H W values (B_c =
    sum(row_mask)), every row normalised with them; the running mean and variance move by ``bn.momentum``
    towards them, the variance unbiased by n / (n - 1) with n = B_c H W, as ``F.batch_norm`` does over a
    batch of those rows. Rows with mask 0 take no part in any statistic (their gradient through the
    statistics is exactly zero); their outputs are finite and meaningless. Eval mode (running statistics,
    rows independent): ``bn(x)``. No host sync: the count stays a device tensor.
    """
    if not (bn.training and bn.track_running_stats) or bn.running_mean is None:
        if bn.training:
            raise ValueError("masked_batch_norm: train mode without running statistics is not supported")
        return bn(x)
    if bn.momentum is None:
        raise ValueError("masked_batch_norm: a cumulative-average BatchNorm (momentum None) is not supported")
    mask = row_mask.to(x.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    count = mask.sum() * (x.shape[2] * x.shape[3])  # () values per channel in the counted rows
    mean = (x * mask).sum(dim=(0, 2, 3)) / count  # (C,)
    centered = x - mean.view(1, -1, 1, 1)  # (B, C, H, W)
    var = (centered.square() * mask).sum(dim=(0, 2, 3)) / count  # (C,) biased, as the normalisation uses
    out = centered * torch.rsqrt(var + bn.eps).view(1, -1, 1, 1)
    if bn.affine:
        out = out * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        m = bn.momentum
        bn.running_mean.mul_(1 - m).add_(m * mean.detach())
        unbiased = var.detach() * (count / (count - 1).clamp_min(1))
        bn.running_var.mul_(1 - m).add_(m * unbiased)
    return out


def masked_forward(module: nn.Module, x: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with every BatchNorm inside it replaced by ``masked_batch_norm`` (``row_mask`` (B,) 0/1).

    Walks what the ResNet parts here are made of: ``nn.Sequential``, torchvision's ``BasicBlock`` (its forward
    written out: conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU) and BatchNorm; any module without a
    BatchNorm inside is called as it is (convolutions, ReLU, pooling work row by row). Anything else that holds
    a BatchNorm is refused rather than run with whole-batch statistics.
    """
    from torchvision.models.resnet import BasicBlock

    if isinstance(module, _BatchNorm):
        return masked_batch_norm(module, x, row_mask)
    if not has_batch_norm(module):
        return module(x)
    if isinstance(module, nn.Sequential):
        for layer in module:
            x = masked_forward(layer, x, row_mask)
        return x
    if isinstance(module, BasicBlock):
        out = module.relu(masked_batch_norm(module.bn1, module.conv1(x), row_mask))
        out = masked_batch_norm(module.bn2, module.conv2(out), row_mask)
        identity = x if module.downsample is None else masked_forward(module.downsample, x, row_mask)
        return module.relu(out + identity)
    raise TypeError(f"masked_forward: no masked form for {type(module).__name__}, which holds a BatchNorm")


IMAGENET_STEM_MIN_SIZE = 128  # inputs at least this side get the 7x7/2 + max-pool stem (also the hybrid's rule)


def uses_imagenet_stem(img_size: int) -> bool:
    """The 7x7/2 conv + 3x3/2 max-pool stem for inputs of at least 128 pixels, else the CIFAR stem."""
    return img_size >= IMAGENET_STEM_MIN_SIZE


class ResNet18(nn.Module):
    def __init__(self, in_chans: int, img_size: int = 32):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        imagenet = uses_imagenet_stem(img_size)
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7 if imagenet else 3, stride=2 if imagenet else 1,
                              padding=3 if imagenet else 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        # The CIFAR stem has no pooling layer at all, so its state-dict keys (body.3 = layer1, ...) stay as they were.
        stem = (net.conv1, net.bn1, net.relu, net.maxpool) if imagenet else (net.conv1, net.bn1, net.relu)
        self.body = nn.Sequential(*stem, net.layer1, net.layer2, net.layer3, net.layer4)

    @property
    def feature_dim(self) -> int:
        return 512

    def forward(self, x: torch.Tensor, row_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (pooled (B, 512), patches (B, h*w, 512)); ``row_mask`` (B,) 0/1: ``masked_forward``."""
        fmap = self.body(x) if row_mask is None else masked_forward(self.body, x, row_mask)  # (B, 512, h, w)
        patches = fmap.flatten(2).transpose(1, 2)  # (B, h*w, 512), row-major positions
        return patches.mean(1), patches  # (B, 512), (B, h*w, 512)
