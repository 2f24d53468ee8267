import torch

from ncil.config import ModelConfig
from ncil.hydra_conf import compose
from ncil.models.head import GrowingHead
from ncil.models.network import build_network


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
    # method-spec 3.3: 10,684,716 for 5 GPSA + CA + norm; timm's CaiT CA block adds two 384-wide
    # LayerScale vectors (design.md 8).
    assert n == 10_684_716 + 2 * 384
    cls, patches = net.backbone(torch.randn(2, 3, 32, 32))
    assert cls.shape == (2, 384) and patches.shape == (2, 64, 384)


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
