"""The released code's hybrid backbone (method-spec 3.1, counts 3.3, init 3.4): counts, shapes, fusion, init."""

import dataclasses
import math

import pytest
import torch

from ncil.models import hybrid as H
from ncil.models.network import build_network, load_network
from ncil.models.vit import ViT
from ncil.pipeline.config import ConfigError, ModelConfig, parse_params
from ncil.pipeline.hydra_conf import compose
from tests.test_models import _model

# A small hybrid at 32x32 for the arithmetic tests: width 8 (stage-4 channels 64), patch 4 -> 8x8 tokens of dim 16.
SMALL = ModelConfig(name="vit", img_size=32, patch_size=4, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0,
                    drop_path=0.0, locality_strength=1.0, resnet_width=8)


@pytest.fixture(scope="module")
def cifar() -> tuple[ModelConfig, H.HybridBackbone]:
    """The released CIFAR configuration: conf/model/vit_paper.yaml + resnet_width 64, 3 channels."""
    cfg = dataclasses.replace(_model("vit_paper"), resnet_width=64)
    torch.manual_seed(0)
    return cfg, H.HybridBackbone(cfg, 3)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_counts_at_the_cifar_configuration(cifar):
    cfg, net = cifar
    # method-spec 3.3: ResNet 11,168,832 + ConViT used 8,910,252 + adapt_fc 197,120 = 20,276,204 trainable
    assert _count(net.resnet) == 11_168_832
    assert _count(net.convit) == 8_910_252
    assert _count(net.adapt_fc) == 197_120  # 384 x 512 + 512
    assert _count(net) == 20_276_204
    assert sum(p.numel() for p in net.parameters()) == 20_276_204  # no frozen extras either
    parts = H.released_parameter_breakdown(cfg, 3)
    assert parts == {"resnet": 11_168_832, "convit_used": 8_910_252, "adapt_fc": 197_120, "cbam": 87_824,
                     "convit_dead": 1_812_964}
    assert H.used_parameter_count(cfg, 3) == 20_276_204
    # + CBAM 87,824 + dead ConViT 1,812,964 (CA block 1,773,312, cls 384, norm 768, head 384 x 100 + 100)
    assert H.released_parameter_count(cfg, 3) == 22_176_992
    assert H.released_parameter_count(cfg, 3, n_classes=10) == 22_176_992 - 90 * 385


def test_dead_parts_are_not_built(cifar):
    _, net = cifar
    names = [name for name, _ in net.named_parameters()]
    assert not [n for n in names if ".ca." in n or ".sa." in n or "cls_token" in n or "class_attn" in n]
    assert not [n for n in names if n.startswith(("norm.", "head.", "convit.norm", "convit.head"))]


def test_cbam_count_by_hand():
    # Per BasicBlock: 2 C (C // 16) (channel attention) + 2 x 7 x 7 (spatial); two blocks per stage.
    # C = 64: 2 (512 + 98) = 1,220; 128: 2 (2,048 + 98) = 4,292; 256: 2 (8,192 + 98) = 16,580;
    # 512: 2 (32,768 + 98) = 65,732; total 87,824.
    assert H.cbam_parameter_count(64) == 1_220 + 4_292 + 16_580 + 65_732 == 87_824
    # width 8: C // 16 = 0, 1, 2, 4 for C = 8, 16, 32, 64 -> 2 (0 + 98) + 2 (32 + 98) + 2 (128 + 98) + 2 (512 + 98)
    assert H.cbam_parameter_count(8) == 196 + 260 + 452 + 1_220


def test_dead_convit_formula_matches_our_vit_parts(cifar):
    """Our ViT = the same GPSA encoder + a class-attention block with ConViT's shapes + cls + norm."""
    cfg, net = cifar
    torch.manual_seed(0)
    vit = ViT(cfg, 3)
    head = 384 * 100 + 100
    assert _count(vit) - _count(net.convit) + head == H.convit_dead_parameter_count(cfg, 100) == 1_812_964


@pytest.mark.parametrize("img_size, width, in_chans", [(224, 64, 3), (32, 16, 1), (64, 8, 3)])
def test_resnet_formula_matches_the_built_trunk(img_size, width, in_chans):
    trunk = H.ResNetTrunk(in_chans, width, H.uses_imagenet_stem(img_size))
    assert _count(trunk) == H.resnet_parameter_count(in_chans, width, H.uses_imagenet_stem(img_size))
    if (img_size, width, in_chans) == (224, 64, 3):
        # torchvision's ImageNet ResNet-18: 11,689,512 with its 512 x 1000 + 1000 fc -> 11,176,512 without
        assert _count(trunk) == 11_689_512 - 513_000


def test_shapes_and_pooled_features_at_32(cifar):
    _, net = cifar
    net.eval()
    with torch.no_grad():
        features, featuremaps = net(torch.randn(2, 3, 32, 32))
    assert featuremaps.shape == (2, 16, 512) and features.shape == (2, 512)
    torch.testing.assert_close(features, featuremaps.mean(1), rtol=0, atol=1e-6)
    assert net.feature_dim == 512


def test_stem_rule_and_stage4_sides():
    assert [H.stage4_side(s) for s in (8, 32, 64, 224)] == [1, 4, 8, 7]
    assert not H.uses_imagenet_stem(64) and H.uses_imagenet_stem(128) and not H.uses_imagenet_stem(127)
    cfg = dataclasses.replace(SMALL, img_size=224, patch_size=16)  # 14x14 tokens -> nearest to 7x7
    torch.manual_seed(0)
    net = H.HybridBackbone(cfg, 3).eval()
    assert net.resnet.stem[0].kernel_size == (7, 7) and isinstance(net.resnet.stem[3], torch.nn.MaxPool2d)
    with torch.no_grad():
        features, featuremaps = net(torch.randn(1, 3, 224, 224))
    assert featuremaps.shape == (1, 49, 64) and features.shape == (1, 64)
    assert H.HybridBackbone(SMALL, 3).resnet.stem[0].kernel_size == (3, 3)


def test_nearest_resize_keeps_even_rows_and_columns():
    """Token n carries value n in every channel; adapt_fc reads channel 0 only (weight 1, bias 0).

    nearest 8x8 -> 4x4 reads token (2i, 2j) = 8 (2i) + 2j = 16 i + 2 j, so every output channel is
    [[0, 2, 4, 6], [16, 18, 20, 22], [32, 34, 36, 38], [48, 50, 52, 54]].
    """
    torch.manual_seed(0)
    net = H.HybridBackbone(SMALL, 3)
    with torch.no_grad():
        net.adapt_fc.weight.zero_()
        net.adapt_fc.weight[:, 0] = 1.0
        net.adapt_fc.bias.zero_()
        tokens = torch.arange(64.0).view(1, 64, 1).expand(1, 64, 16)
        got = net.convit_map(tokens, (4, 4))  # (1, 64, 4, 4)
    expected = torch.tensor([[0.0, 2, 4, 6], [16, 18, 20, 22], [32, 34, 36, 38], [48, 50, 52, 54]])
    assert got.shape == (1, 64, 4, 4)
    assert torch.equal(got, expected.expand(1, 64, 4, 4))


def _manual_adapt(net: H.HybridBackbone, tokens: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """adapt_fc applied by hand to the tokens at grid (r, c) for r, c in ``rows``: (B, C_out, len, len)."""
    g = net.convit.grid
    grid = tokens.view(tokens.shape[0], g, g, tokens.shape[2])  # (B, g, g, D), row-major
    picked = grid[:, rows][:, :, rows]  # (B, k, k, D)
    w = net.adapt_fc.weight[:, :, 0, 0]  # (C_out, D)
    return torch.einsum("bijd,cd->bcij", picked, w) + net.adapt_fc.bias.view(1, -1, 1, 1)


def test_fusion_adds_one_tenth_of_the_adapted_even_tokens():
    torch.manual_seed(0)
    net = H.HybridBackbone(SMALL, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        resnet_map, tokens = net.resnet(x), net.convit(x)  # (2, 64, 4, 4), (2, 64, 16)
        fused = net.fused_map(x)
        features, featuremaps = net(x)
        adapted = _manual_adapt(net, tokens, [0, 2, 4, 6])
    assert H.FUSION_SCALE == 0.1
    torch.testing.assert_close(fused - resnet_map, 0.1 * adapted, rtol=0, atol=1e-5)
    assert (0.1 * adapted).abs().max() > 1e-2  # the ConViT term is not negligible, so a wrong scale shows
    # featuremaps row 4 i + j is M[:, :, i, j] (row-major, channel last); features = spatial mean
    assert torch.equal(featuremaps[:, 1], fused[:, :, 0, 1]) and torch.equal(featuremaps[:, 13], fused[:, :, 3, 1])
    torch.testing.assert_close(features, fused.mean(dim=(2, 3)), rtol=0, atol=0)
    assert (fused < 0).any()  # no ReLU after the sum


def test_digits_one_position_keeps_token_zero():
    """vit_digits (8x8, patch 2 -> 4x4 tokens, dim 64), width 16: stage 4 is 1x1, nearest keeps token (0, 0)."""
    cfg = dataclasses.replace(_model("vit_digits"), resnet_width=16)
    torch.manual_seed(0)
    net = H.HybridBackbone(cfg, 1).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        features, featuremaps = net(x)
        fused = net.fused_map(x)
        expected = net.resnet(x) + 0.1 * _manual_adapt(net, net.convit(x), [0])
    assert features.shape == (3, 128) and featuremaps.shape == (3, 1, 128)
    assert torch.equal(featuremaps[:, 0], features)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-5)


def test_init_of_resnet_convs_bn_and_adapt_fc(cifar):
    _, net = cifar
    # layer4.0.conv1: 256 -> 512, 3x3 (1,179,648 draws): N(0, sqrt(2 / (9 x 512))) = 0.02083 (fan-in
    # would give 0.02946, PyTorch's default 1 / sqrt(3 x 2304) = 0.01203); standard error ~0.07 %.
    w = net.resnet.layer4[0].conv1.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.01)
    assert abs(w.mean().item()) < 1e-4
    shortcut = net.resnet.layer4[0].downsample[0].weight  # 1x1, 256 -> 512: sqrt(2 / 512) = 0.0625
    assert shortcut.std().item() == pytest.approx(0.0625, rel=0.01)
    bns = [m for m in net.resnet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 1 + 16 + 3  # stem, 2 per block, 3 shortcuts
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in bns)
    # adapt_fc keeps PyTorch's default (built after the init loop): U(-1/sqrt(384), 1/sqrt(384)), std 1/sqrt(3 x 384)
    a = net.adapt_fc.weight
    assert a.abs().max().item() <= 1 / math.sqrt(384)
    assert a.std().item() == pytest.approx(1 / math.sqrt(3 * 384), rel=0.02)
    # ConViT parts as our ViT: GPSA values start as the identity, the positional embedding is trunc-normal(0.02)
    assert torch.equal(net.convit.blocks[0].attn.v.weight, torch.eye(384))
    assert net.convit.pos_embed.std().item() == pytest.approx(0.02, rel=0.05)


def test_construction_order_resnet_then_convit_then_adapt_fc():
    torch.manual_seed(3)
    net = H.HybridBackbone(SMALL, 3)
    torch.manual_seed(3)
    trunk = H.ResNetTrunk(3, 8, imagenet_stem=False)
    encoder = H.GPSAEncoder(SMALL, 3)
    adapt = torch.nn.Conv2d(16, 64, 1)
    for a, b in ((net.resnet, trunk), (net.convit, encoder), (net.adapt_fc, adapt)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_convit_branch_shares_the_vit_encoder_arithmetic():
    """The ViT's encoder weights load into GPSAEncoder and give the ViT's patch tokens exactly."""
    cfg = _model("vit_digits")
    torch.manual_seed(0)
    vit = ViT(cfg, 1).eval()
    encoder = H.GPSAEncoder(cfg, 1).eval()
    assert H.GPSAEncoder.encode is ViT.encode
    encoder_keys = ("patch_embed", "pos_embed", "blocks")
    encoder.load_state_dict({k: v for k, v in vit.state_dict().items() if k.startswith(encoder_keys)})
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        _, patches = vit(x)
        assert torch.equal(encoder(x), patches) and torch.equal(vit.encode(x), patches)


def test_incremental_net_round_trip_through_load_network():
    torch.manual_seed(0)
    net = build_network(SMALL, 3, n_outputs=10, backbone="hybrid")
    x = torch.randn(4, 3, 32, 32)
    net.train()
    net(x)  # moves the BN running statistics away from their initial values
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert out["cls"].shape == (4, 64) and out["patches"].shape == (4, 16, 64) and out["logits"].shape == (4, 10)
    torch.testing.assert_close(out["logits"], net.head(out["cls"]), rtol=0, atol=0)
    torch.manual_seed(1)  # a different init, overwritten by the state dict
    loaded = load_network(SMALL, 3, net.state_dict(), backbone="hybrid").eval()
    assert not torch.equal(loaded.backbone.resnet.layer1[0].bn1.running_mean, torch.zeros(8))
    with torch.no_grad():
        again = loaded(x)
    assert all(torch.equal(out[k], again[k]) for k in ("cls", "patches", "logits"))


def test_bad_width_names_the_key():
    with pytest.raises(ValueError, match="model.resnet_width"):
        H.HybridBackbone(dataclasses.replace(SMALL, resnet_width=0), 3)


def test_method_backbone_hybrid_is_accepted_and_a_typo_is_refused():
    data = compose([])
    data["method"]["finetune"]["backbone"] = "hybrid"
    data["method"]["finetune"]["base_recipe"] = "hybrid_plain"  # a recipe of its own (base-recipe fields differ)
    assert parse_params(data).method["finetune"].backbone == "hybrid"
    data["method"]["finetune"]["backbone"] = "hybird"
    expected = r"method\.finetune\.backbone: expected one of \['vit', 'resnet18', 'hybrid', 'dytox'\], got 'hybird'"
    with pytest.raises(ConfigError, match=expected):
        parse_params(data)
