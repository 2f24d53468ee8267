"""The paper's vision transformer (method-spec 3.2; paper Section "Implementation Details").

Five GPSA blocks (ConViT) form the encoder over the patch tokens; one CaiT class-attention block is
the decoder that updates only the [CLS] token; a final LayerNorm is applied to [CLS]. ``forward``
returns the [CLS] embedding (the prototype space, ``P_{t,cls}`` of Eq. 2) and the patch tokens after
the encoder (``P_{t,i}``, the patches PKS distils).

The class-attention block has plain residuals, as ConViT's (method-spec 3.1, item 2): timm's CaiT
block would scale both branches by a learned LayerScale that starts at 1e-4, which leaves [CLS]
almost equal to its initial token for the first epochs and adds 2 x D parameters ConViT has not.
"""

from __future__ import annotations

import torch
from torch import nn

from ncil.pipeline.config import ModelConfig


def import_timm_blocks():
    """timm's ConViT block (GPSA), the class-attention block built from timm parts, the truncated-normal initialiser."""
    from timm.layers import trunc_normal_
    from timm.models.convit import Block

    return Block, ClassAttentionBlock, trunc_normal_


class ClassAttentionBlock(nn.Module):
    """Updates only [CLS]: cls += DropPath(ClassAttn(LN([cls; patches]))); cls += DropPath(MLP(LN(cls))).

    Queries come from [CLS], keys and values from all N + 1 tokens (q, k, v without bias, the output
    projection with bias): timm's ``ClassAttn`` and ``Mlp`` with plain residuals, no LayerScale.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_path: float = 0.0):
        super().__init__()
        from timm.layers import DropPath, Mlp
        from timm.models.cait import ClassAttn

        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttn(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, patches: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """patches (B, N, D), cls (B, 1, D) -> updated cls (B, 1, D)."""
        cls = cls + self.drop_path(self.attn(self.norm1(torch.cat((cls, patches), dim=1))))
        return cls + self.drop_path(self.mlp(self.norm2(cls)))


def drop_path_rates(cfg: ModelConfig) -> list[float]:
    """Stochastic-depth rates linspace(0, drop_path, depth + 1): one per GPSA block, the class-attention block's last."""
    return torch.linspace(0, cfg.drop_path, cfg.depth + 1).tolist()


def gpsa_blocks(cfg: ModelConfig) -> nn.ModuleList:
    """The encoder: ``cfg.depth`` ConViT GPSA blocks (timm's ``Block``, ``use_gpsa``), before their init."""
    Block = import_timm_blocks()[0]
    rates = drop_path_rates(cfg)
    return nn.ModuleList(
        Block(
            cfg.embed_dim,
            cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=False,
            drop_path=rates[i],
            use_gpsa=True,
            locality_strength=cfg.locality_strength,
        )
        for i in range(cfg.depth)
    )


class ViT(nn.Module):
    def __init__(self, cfg: ModelConfig, in_chans: int):
        super().__init__()
        _, ClassAttentionBlock, trunc_normal_ = import_timm_blocks()

        self.embed_dim = cfg.embed_dim
        self.num_patches = (cfg.img_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, cfg.embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        rates = drop_path_rates(cfg)
        self.blocks = gpsa_blocks(cfg)
        self.class_attn = ClassAttentionBlock(
            cfg.embed_dim, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=False, drop_path=rates[-1]
        )
        self.norm = nn.LayerNorm(cfg.embed_dim)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for module in [*self.blocks, self.class_attn, self.norm]:
            module.apply(_init_linear_and_norm)
        for block in self.blocks:  # timm's GPSA locality init (identity values, local positional heads)
            block.attn.local_init()

    @property
    def feature_dim(self) -> int:
        return self.embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> patch tokens after the GPSA encoder (B, N, D), before any class attention.

        Reads only ``patch_embed``, ``pos_embed`` and ``blocks``, so the hybrid backbone's ConViT
        branch (ncil/models/hybrid.py), which builds just those, shares this arithmetic.
        """
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D), row-major patches
        tokens = tokens + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)  # (B, N, D)
        return tokens

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> ([CLS] (B, D), patch tokens after the encoder (B, N, D))."""
        tokens = self.encode(x)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        cls = self.class_attn(tokens, cls)  # (B, 1, D): attends over [CLS; patches]
        cls = self.norm(cls).squeeze(1)  # (B, D)
        return cls, tokens


def _init_linear_and_norm(module: nn.Module) -> None:
    trunc_normal_ = import_timm_blocks()[2]
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
