"""The released code's hybrid backbone: ResNet-18 + 0.1 x ConViT (method-spec 3.1, counts 3.3, init 3.4).

The `official` preset's backbone (``backbone: hybrid``). A ResNet-18 and a GPSA encoder (ConViT's
first ``cfg.depth`` blocks) see the same image; the encoder's patch tokens P are laid out on their
g x g grid, resized with nearest interpolation to the ResNet's stage-4 map R and projected by a 1x1
convolution, and added at a fixed scale::

    M = R + FUSION_SCALE * adapt_fc(nearest(P))          (B, 8w, h, w); no ReLU after the sum
    features    = spatial mean of M                      (B, 8w)   the prototype space ("[CLS]")
    featuremaps = M flattened row-major, channel last    (B, h*w, 8w)  PKS's "patches"

with w = ``cfg.resnet_width`` (64 in the released code: 8w = 512). ``forward`` returns
(features, featuremaps), the tuple contract of ``ncil.models.vit.ViT.forward``.

Stem rule (``ncil.models.resnet.uses_imagenet_stem``): inputs of at least 128 pixels get the
ImageNet stem (7x7/2 conv + BN + ReLU + 3x3/2 max-pool: 224 -> 7x7 at stage 4); smaller ones get the
CIFAR stem (3x3 stride-1 conv + BN + ReLU, no pool: 32 -> 4x4, TinyImageNet's 64 -> 8x8, digits'
8 -> 1x1). The released code picks the stem by data-set name; this rule gives the same choice for
its three data sets.

What is not built. The released code constructs parts it never applies: a CBAM channel- and
spatial-attention pair in every BasicBlock, and ConViT's class-attention block, CLS token, final
norm and 100-way head (its forward computes the class-attention output and discards it). None of
them receives a gradient, so none is built here; ``released_parameter_count`` adds them back, from
the architecture's formulas, to give the count the released code prints (22,176,992 at the CIFAR
configuration, 20,276,204 of them used).

Order of construction (it fixes the initial random draws under a seed):

1. ResNet trunk (``ResNetTrunk``): stem, then stages 1-4 (each block's convolutions drawn with
   PyTorch's default init as they are built), then the released code's init loop over the trunk's
   modules in registration order: every conv re-drawn from N(0, sqrt(2 / (k * k * out_channels))),
   every BN set to weight 1, bias 0.
2. ConViT branch (``GPSAEncoder``): patch-embedding conv (PyTorch default init), learned positional
   embedding, the GPSA blocks; then as in our ViT: trunc-normal(0.02) positional embedding, trunc-
   normal(0.02) Linear weights with zero biases and LN (1, 0) in the blocks, GPSA locality init.
3. ``adapt_fc``: Conv1x1(D -> 8w, bias), PyTorch default init (it is built after the init loop).

The draws cannot equal the released code's (it also draws for the dead modules); the distributions
do (method-spec 3.4).

Digits (8x8, 1 channel, ``vit_digits``: patch 2, 4x4 tokens, dim 64): the CIFAR stem leaves a 1x1
stage-4 map, nearest 4x4 -> 1x1 keeps only token (0, 0), and ``featuremaps`` is (B, 1, 8w). PKS over
a single position is degenerate there (its one patch equals the pooled feature): the digits grid
checks plumbing, not the method. Width 16 suits a CPU digits grid: a forward + backward of 64 digits
(one thread, shared CPU) took about 0.5 s at width 16 (0.96 M parameters, 128-d features) against
1.7 s at width 64 (11.5 M) and 0.34 s for the vit_digits ViT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ncil.models.resnet import masked_forward, uses_imagenet_stem
from ncil.models.vit import ViT, _init_linear_and_norm, gpsa_blocks, import_timm_blocks
from ncil.pipeline.config import ModelConfig

FUSION_SCALE = 0.1  # weight of the ConViT branch in M = R + 0.1 * adapt(nearest(P)) (released code's constant)
STAGE_BLOCKS = (2, 2, 2, 2)  # ResNet-18: BasicBlocks per stage
STAGE_STRIDES = (1, 2, 2, 2)
CBAM_REDUCTION = 16  # released CBAM channel attention: C -> C // 16 -> C, 1x1 convs without bias
CBAM_SPATIAL_KERNEL = 7  # released CBAM spatial attention: Conv(2 -> 1, 7x7, no bias)


def stage_widths(width: int) -> tuple[int, ...]:
    """Channels of the four stages: w, 2w, 4w, 8w."""
    return tuple(width * 2**i for i in range(len(STAGE_BLOCKS)))


def stage4_side(img_size: int) -> int:
    """Side of the stage-4 map: every stride-2 layer (3x3 pad 1, 7x7 pad 3, 3x3 pool pad 1) maps n -> ceil(n / 2).

    CIFAR stem: 3 halvings (32 -> 4, 64 -> 8, 8 -> 1); ImageNet stem: 5 (224 -> 7).
    """
    halvings = sum(s == 2 for s in STAGE_STRIDES) + (2 if uses_imagenet_stem(img_size) else 0)
    side = img_size
    for _ in range(halvings):
        side = -(-side // 2)
    return side


class ResNetTrunk(nn.Module):
    """ResNet-18 without pooling or head: stem + 2-2-2-2 BasicBlocks (widths w..8w, strides 1/2/2/2).

    torchvision's ``BasicBlock`` (conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU; the shortcut is
    1x1 conv with stride + BN when the shape changes). ``ncil.models.resnet.ResNet18`` is not reused:
    torchvision's ResNet fixes the width at 64 and builds a 1000-way fc (dead parameters, extra draws).
    """

    def __init__(self, in_chans: int, width: int, imagenet_stem: bool):
        super().__init__()
        from torchvision.models.resnet import BasicBlock, conv1x1

        if imagenet_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        inplanes = width
        stages = []
        for planes, n_blocks, stride in zip(stage_widths(width), STAGE_BLOCKS, STAGE_STRIDES):
            shortcut = None
            if stride != 1 or inplanes != planes:
                shortcut = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
            blocks = [BasicBlock(inplanes, planes, stride, shortcut)]
            blocks += [BasicBlock(planes, planes) for _ in range(1, n_blocks)]
            stages.append(nn.Sequential(*blocks))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        for module in self.modules():  # method-spec 3.4: the released init loop, before any other part exists
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, row_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) -> stage-4 map R (B, 8w, h, w). ``row_mask`` (B,) 0/1: BatchNorm statistics over the
        rows with mask 1 only (``resnet.masked_forward``; static shapes, issue 21)."""
        if row_mask is not None:
            for part in (self.stem, self.layer1, self.layer2, self.layer3, self.layer4):
                x = masked_forward(part, x, row_mask)
            return x
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class GPSAEncoder(nn.Module):
    """ConViT's used part: patch embedding + learned positional embedding + ``cfg.depth`` GPSA blocks.

    Built from our ViT's parts (timm's ConViT ``Block`` with ``use_gpsa=True``, the same init), and
    its forward is ``ViT.encode`` itself. Drop-path rates are linspace(0, drop_path, depth + 1)[:depth],
    as in the ViT and the released ConViT, whose last rate belongs to the (dead) class-attention block.
    """

    def __init__(self, cfg: ModelConfig, in_chans: int):
        super().__init__()
        trunc_normal_ = import_timm_blocks()[2]

        self.embed_dim = cfg.embed_dim
        self.grid = cfg.img_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2, cfg.embed_dim))
        self.blocks = gpsa_blocks(cfg)
        trunc_normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            block.apply(_init_linear_and_norm)
        for block in self.blocks:  # timm's GPSA locality init (identity values, local positional heads)
            block.attn.local_init()

    encode = ViT.encode  # x (B, C, H, W) -> patch tokens (B, N, D): the ViT's encoder arithmetic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> patch tokens after the GPSA blocks (B, N, D), no final norm."""
        return self.encode(x)


class HybridBackbone(nn.Module):
    """ResNet-18 + 0.1 x ConViT, fused at stage 4 (method-spec 3.1); see the module docstring."""

    def __init__(self, cfg: ModelConfig, in_chans: int):
        super().__init__()
        if cfg.resnet_width < 1:
            raise ValueError(f"model.resnet_width: expected a positive channel count, got {cfg.resnet_width}")
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"model.patch_size: expected a divisor of img_size {cfg.img_size}, got {cfg.patch_size}")
        self.width = cfg.resnet_width
        self.resnet = ResNetTrunk(in_chans, cfg.resnet_width, uses_imagenet_stem(cfg.img_size))
        self.convit = GPSAEncoder(cfg, in_chans)
        self.adapt_fc = nn.Conv2d(cfg.embed_dim, self.feature_dim, kernel_size=1, bias=True)

    @property
    def feature_dim(self) -> int:
        return stage_widths(self.width)[-1]

    def convit_map(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Patch tokens (B, N, D) -> adapt_fc(nearest(P)) (B, 8w, h, w), not yet scaled.

        The tokens go onto their g x g grid row-major, then nearest resize to ``size``: output
        index i reads input floor(i * g / h), so 8 -> 4 keeps rows and columns 0, 2, 4, 6.
        """
        grid = self.convit.grid
        tokens = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid, grid)  # (B, D, g, g)
        return self.adapt_fc(F.interpolate(tokens, size=size, mode="nearest"))  # (B, 8w, h, w)

    def fused_map(self, x: torch.Tensor, row_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) -> M = R + FUSION_SCALE * adapt_fc(nearest(P)) (B, 8w, h, w). ``row_mask``: the
        ResNet's BatchNorm statistics over those rows only (``ResNetTrunk.forward``); the ConViT branch works
        row by row."""
        resnet_map = self.resnet(x) if row_mask is None else self.resnet(x, row_mask)  # (B, 8w, h, w)
        tokens = self.convit(x)  # (B, N, D)
        return resnet_map + FUSION_SCALE * self.convit_map(tokens, resnet_map.shape[-2:])

    def forward(self, x: torch.Tensor, row_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (features (B, 8w), featuremaps (B, h*w, 8w)); ``row_mask`` (B,) 0/1 or None: see
        ``fused_map``."""
        fused = self.fused_map(x) if row_mask is None else self.fused_map(x, row_mask)  # (B, 8w, h, w)
        featuremaps = fused.flatten(2).transpose(1, 2)  # (B, h*w, 8w), row-major positions
        return fused.mean(dim=(2, 3)), featuremaps


# --- parameter counts (method-spec 3.3), from the architecture's formulas ---------------------------


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _mlp(dim: int, mlp_ratio: float) -> int:
    hidden = int(dim * mlp_ratio)
    return _linear(dim, hidden) + _linear(hidden, dim)


def resnet_parameter_count(in_chans: int, width: int, imagenet_stem: bool) -> int:
    """ResNet-18 trunk: stem conv (k = 7 or 3) + BN, then per block two 3x3 convs + BNs (+ 1x1 shortcut + BN)."""
    k = 7 if imagenet_stem else 3
    total = in_chans * width * k * k + 2 * width
    inplanes = width
    for planes, n_blocks, stride in zip(stage_widths(width), STAGE_BLOCKS, STAGE_STRIDES):
        for b in range(n_blocks):
            n_in = inplanes if b == 0 else planes
            total += n_in * planes * 9 + 2 * planes + planes * planes * 9 + 2 * planes
            if b == 0 and (stride != 1 or inplanes != planes):
                total += inplanes * planes + 2 * planes
        inplanes = planes
    return total


def cbam_parameter_count(width: int) -> int:
    """The released code's never-applied CBAM pair, one per BasicBlock (87,824 at width 64).

    Channel attention on C channels: 1x1 convs C -> C // 16 -> C without bias (2 C (C // 16)); spatial
    attention: Conv(2 -> 1, 7x7, no bias) (98).
    """
    per_stage = (
        2 * planes * (planes // CBAM_REDUCTION) + 2 * CBAM_SPATIAL_KERNEL**2 for planes in stage_widths(width)
    )
    return sum(n_blocks * p for n_blocks, p in zip(STAGE_BLOCKS, per_stage))


def gpsa_block_parameter_count(dim: int, num_heads: int, mlp_ratio: float) -> int:
    """GPSA block: 2 LNs, qk (2D x D) and v (D x D) without bias, proj with bias, pos_proj (3 -> H), gates (H), MLP."""
    attn = _linear(dim, 2 * dim, False) + _linear(dim, dim, False) + _linear(dim, dim) + _linear(3, num_heads)
    return 4 * dim + attn + num_heads + _mlp(dim, mlp_ratio)


def convit_used_parameter_count(cfg: ModelConfig, in_chans: int) -> int:
    """Patch-embedding conv (with bias) + positional embedding + ``cfg.depth`` GPSA blocks (8,910,252 for CIFAR)."""
    n_tokens = (cfg.img_size // cfg.patch_size) ** 2
    patch = in_chans * cfg.embed_dim * cfg.patch_size**2 + cfg.embed_dim
    return patch + n_tokens * cfg.embed_dim + cfg.depth * gpsa_block_parameter_count(
        cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio
    )


def convit_dead_parameter_count(cfg: ModelConfig, n_classes: int) -> int:
    """ConViT's parts the released code builds but never trains (1,812,964 for CIFAR).

    Class-attention block (2 LNs, q, k, v without bias, proj with bias, MLP) + CLS token (D) + final
    LN (2D) + ConViT's own n_classes-way head.
    """
    d = cfg.embed_dim
    class_attention = 4 * d + 3 * _linear(d, d, False) + _linear(d, d) + _mlp(d, cfg.mlp_ratio)
    return class_attention + d + 2 * d + _linear(d, n_classes)


def released_parameter_breakdown(cfg: ModelConfig, in_chans: int, n_classes: int = 100) -> dict[str, int]:
    """The released backbone's parameters by part (method-spec 3.3).

    ``n_classes``: the outputs of ConViT's own (dead) head, 100 in the released configurations.
    """
    width = stage_widths(cfg.resnet_width)[-1]
    return {
        "resnet": resnet_parameter_count(in_chans, cfg.resnet_width, uses_imagenet_stem(cfg.img_size)),
        "convit_used": convit_used_parameter_count(cfg, in_chans),
        "adapt_fc": _linear(cfg.embed_dim, width),
        "cbam": cbam_parameter_count(cfg.resnet_width),
        "convit_dead": convit_dead_parameter_count(cfg, n_classes),
    }


USED_PARTS = ("resnet", "convit_used", "adapt_fc")  # the parts HybridBackbone builds


def released_parameter_count(cfg: ModelConfig, in_chans: int, n_classes: int = 100) -> int:
    """What the released code prints (PyCIL's count_parameters: every parameter, used or not): 22,176,992 for CIFAR."""
    return sum(released_parameter_breakdown(cfg, in_chans, n_classes).values())


def used_parameter_count(cfg: ModelConfig, in_chans: int) -> int:
    """Parameters that receive a gradient, i.e. those of HybridBackbone: 20,276,204 for CIFAR."""
    parts = released_parameter_breakdown(cfg, in_chans)
    return sum(parts[name] for name in USED_PARTS)
