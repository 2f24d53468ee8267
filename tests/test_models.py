import torch

from ncil.models.head import GrowingHead
from ncil.models.network import build_network
from ncil.pipeline.config import ModelConfig
from ncil.pipeline.hydra_conf import compose


def _model(name: str) -> ModelConfig:
    cfg = compose([f"model={name}"])["model"]
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})


def test_digits_vit_shapes():
    torch.manual_seed(0)
    net = build_network(_model("vit_digits"), in_chans=1, n_outputs=4)
    out = net(torch.randn(3, 1, 8, 8))
    assert out["cls"].shape == (3, 64) and out["patches"].shape == (3, 16, 64) and out["logits"].shape == (3, 4)


def test_paper_vit_size_and_shapes():
    torch.manual_seed(0)
    net = build_network(_model("vit_paper"), in_chans=3)
    n = sum(p.numel() for p in net.backbone.parameters())
    # method-spec 3.3: 10,684,716 for 5 GPSA + CA + norm (plain residuals: no LayerScale vectors)
    assert n == 10_684_716
    cls, patches = net.backbone(torch.randn(2, 3, 32, 32))
    assert cls.shape == (2, 384) and patches.shape == (2, 64, 384)


def test_class_attention_block_has_plain_residuals():
    """cls' = cls + A(LN1([cls; x])), cls'' = cls' + MLP(LN2(cls')): ConViT's block, not CaiT's LayerScale."""
    torch.manual_seed(0)
    net = build_network(_model("vit_digits"), in_chans=1).eval()
    block = net.backbone.class_attn
    assert not [name for name, _ in block.named_parameters() if "gamma" in name]
    patches, cls = torch.randn(3, 16, 64), torch.randn(3, 1, 64)
    with torch.no_grad():
        after_attn = cls + block.attn(block.norm1(torch.cat((cls, patches), dim=1)))
        expected = after_attn + block.mlp(block.norm2(after_attn))
        got = block(patches, cls)
        # the attention branch alone moves [CLS] by O(0.1), not the O(1e-5) a 1e-4 LayerScale would allow
        assert (after_attn - cls).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_head_growth_keeps_old_rows_bit_identical():
    torch.manual_seed(0)
    head = GrowingHead(8, 4)
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    head.grow(6)
    assert head.out_features == 6
    assert torch.equal(head.weight[:4], w) and torch.equal(head.bias[:4], b)
    assert torch.all(head.bias[4:] == 0)
    bound = (3.0 / 8) ** 0.5
    assert head.weight[4:].abs().max() <= bound
    assert head(torch.zeros(2, 8)).shape == (2, 6)
