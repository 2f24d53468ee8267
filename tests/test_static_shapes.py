"""``runtime.static_shapes`` (issue 21 items 1, 2 and 6): the official step with the same shapes every step and
no host sync, against the compacted step that the default grid trains with.

Static shapes keep all R * B mixup candidates (method-spec 2.4) with a 0/1 row mask instead of compacting the
kept ones, and run the colour jitter's operations on the whole batch, each image keeping its own operation's
result. The values must be the compacted step's: the two forms sum in other orders, so they are compared with
stated float32 tolerances, never for exact equality (float32 epsilon 2^-23 ~ 1.19e-7):

* ``REDUCTION_RTOL`` = 2^-19 (16 ulp of the result): one loss function over the same per-row values, reduced
  as a masked sum over B' rows instead of a mean over the kept ones (pairwise sums of at most a few hundred
  float32 terms: a few ulp each way, and one division);
* ``NETWORK_RTOL``: a forward and backward through the hybrid backbone, whose ten BatchNorm layers take their
  statistics as masked sums here and in ``F.batch_norm``'s kernel there (another algorithm and order); the
  layers pass their rounding differences on, and a BatchNorm backward cancels large sums, so elements are
  compared against the largest magnitude of their tensor (``assert_near``). In float64 (eps 2^-53 ~ 1.1e-16)
  the two forms must agree to 1e-10 of that scale: rounding through ~20 layers stays many orders below it,
  while one dropped row leaking into a statistic moves values by percents. In float32, as training runs,
  1e-4 (measured: below 1e-5). The step's L_clf is computed in float32 by design (``logits.float()``), so
  in the float64 step it and the gradients carry float32 rounding: ``REDUCTION_RTOL`` and 1e-5;
* ``PIXEL_ATOL`` = 2^-20 (8 ulp at 1.0): colour jitter on pixels in [0, 1], the same operation on the same
  image's values, only the batch it runs in differs.

The sync counts (0 per step with static shapes, every method of both presets) are in tests/test_step_syncs.py,
the GPU's in tests/test_gpu.py.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from ncil.data import augment
from ncil.methods import official_step as official
from ncil.methods.baseline import feature_distillation
from ncil.methods.head_layout import HeadLayout
from ncil.methods.mixup import DROPPED_LABEL, mixup_batch
from ncil.methods.objective import OldKnowledge
from ncil.methods.official import classification_loss, identity_transfer, pks_official, transfer_loss
from ncil.methods.pks import masked_mean, pks_loss
from ncil.models.network import build_network
from ncil.pipeline.config import ConfigError, RuntimeConfig, parse_params, resolve_static_shapes
from ncil.pipeline.hydra_conf import compose

REDUCTION_RTOL = 2.0**-19
NETWORK_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
PIXEL_ATOL = 2.0**-20


def assert_near(actual: torch.Tensor, expected: torch.Tensor, rtol: float, floor: float = 0.0, msg: str = "") -> None:
    """max |actual - expected| <= rtol * max(max |expected|, floor): closeness on the tensor's own scale (``floor``:
    for a tensor that is only rounding noise, a scale taken from elsewhere)."""
    assert actual.shape == expected.shape, msg
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, floor)
    assert err <= rtol * scale, f"{msg}: max error {err:.3g} > {rtol:.1g} x scale {scale:.3g}"

TINY = ["preset=official", "model=vit_digits_tiny", "+model.resnet_width=4", "train=smoke", "train.epochs=2",
        "train.batch_size=16", "runtime.device=cpu"]


@functools.cache
def _params():
    return parse_params(compose(TINY))


# --- the setting (item 6, d) ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["yes", "1", "graphs", "static"])
def test_a_bad_static_shapes_value_names_the_field_and_the_allowed_values(value):
    with pytest.raises(ConfigError, match=r"runtime\.static_shapes: expected one of auto, true, false, got "):
        parse_params(compose([f"runtime.static_shapes={value}"]))


def test_static_shapes_defaults_to_auto_and_auto_means_static_only_under_cuda_graphs():
    assert parse_params(compose([])).runtime.static_shapes == "auto" == RuntimeConfig().static_shapes
    assert parse_params(compose(["runtime.static_shapes=true"])).runtime.static_shapes is True
    assert parse_params(compose(["runtime.static_shapes=false"])).runtime.static_shapes is False
    assert [resolve_static_shapes("auto", c) for c in (False, True, "graphs")] == [False, False, True]
    assert [resolve_static_shapes(v, "graphs") for v in (True, False)] == [True, False]
    assert [resolve_static_shapes(v, False) for v in (True, False)] == [True, False]


def test_the_checkpoint_records_static_shapes_only_when_it_is_on():
    """The compacted step's checkpoints keep their bytes (no new key); a static one says so."""
    from ncil.learning import training

    method = _params().method["fcs"]
    job = training.TaskJob(1, 1, list(range(10)), [[0, 1, 2, 3], [4, 5]], "fcs", method, {})
    default = training.run_config_snapshot(_params(), job, "cpu")["runtime"]
    static = training.run_config_snapshot(parse_params(compose(TINY + ["runtime.static_shapes=true"])), job, "cpu")
    assert default == {"threads": 1, "numerics": "native", "precision": "fp32"}
    assert static["runtime"] == {**default, "static_shapes": True}


# --- mixup rows (item 1, b) -------------------------------------------------------------------------------------

LAYOUT = HeadLayout(4, 3, 4, mixup=True)  # K_old 4, C_t 3: real columns 0..27, mixup columns 28..30


def test_the_static_mixup_rows_are_the_compacted_ones_plus_masked_candidates_with_the_same_draws():
    x, y = torch.randn(8, 3, 4, 4), torch.tensor([4, 5, 6, 4, 5, 4, 6, 6])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    compact, labels = mixup_batch(x, y, LAYOUT, g1)
    every, all_labels, keep = mixup_batch(x, y, LAYOUT, g2, static=True)
    assert torch.equal(g1.get_state(), g2.get_state())  # the same draws, in the same order
    assert every.shape == (4 * 8, 3, 4, 4) and keep.dtype == torch.bool and 0 < int(keep.sum()) < 32
    assert torch.equal(all_labels[keep], labels)  # integer labels: the same columns
    assert set(all_labels[~keep].tolist()) == {DROPPED_LABEL} and 0 <= DROPPED_LABEL < LAYOUT.n_outputs
    # The same two products and one sum per element (lam x_i + (1 - lam) x_pi(i)): at most rounding apart.
    torch.testing.assert_close(every[keep], compact, rtol=REDUCTION_RTOL, atol=0.0)


def test_no_rounds_give_no_rows_in_both_forms():
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([4, 5, 4, 5])
    mixed, labels, keep = mixup_batch(x, y, LAYOUT, torch.Generator(), rounds=0, static=True)
    assert mixed.shape == (0, 3, 2, 2) and labels.shape == keep.shape == (0,)


def _rows_and_mask(seed=0, n=12, d=6, n_patches=5):
    torch.manual_seed(seed)
    mask = torch.tensor([1.0] * 4 + [1, 0, 0, 1, 0, 1, 1, 0])[:n]  # 4 rotated rows, then kept/dropped candidates
    return (torch.randn(n, d), torch.randn(n, d), torch.randn(n, n_patches, d), torch.randn(n, n_patches, d),
            torch.randn(n, 9), torch.randint(0, 9, (n,)), mask)


def _leaf(t):
    return t.clone().requires_grad_(True)


LOSSES = {  # name -> loss(student f, teacher f, student patches, teacher patches, logits, targets, row_mask)
    "ce": lambda f, of, p, op, z, y, m: classification_loss(z, y, 0.1, m),
    "fkd": lambda f, of, p, op, z, y, m: feature_distillation(f, of, m),
    "transfer": lambda f, of, p, op, z, y, m: transfer_loss(f, of, torch.nn.Identity(), m),
    "pks_official": lambda f, of, p, op, z, y, m: pks_official(p, op, f, m),
    "pks_paper": lambda f, of, p, op, z, y, m: pks_loss(f, p, of, op, row_mask=m),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_masked_loss_is_the_compacted_loss_and_dropped_rows_get_exactly_zero_gradient(name):
    f, of, p, op, z, y, mask = _rows_and_mask()
    kept = mask.bool()
    loss = LOSSES[name]
    student = [_leaf(f), _leaf(p), _leaf(z)]
    masked = loss(student[0], of, student[1], op, student[2], y, mask)
    compact_student = [_leaf(f[kept]), _leaf(p[kept]), _leaf(z[kept])]
    compact = loss(compact_student[0], of[kept], compact_student[1], op[kept], compact_student[2], y[kept], None)
    torch.testing.assert_close(masked, compact, rtol=REDUCTION_RTOL, atol=0.0)
    masked.backward()
    compact.backward()
    for full, part in zip(student, compact_student):
        if part.grad is None:  # this loss does not read that input
            assert full.grad is None
            continue
        assert torch.all(full.grad[~kept] == 0)  # exactly zero: multiplied by the mask's 0
        torch.testing.assert_close(full.grad[kept], part.grad, rtol=REDUCTION_RTOL, atol=1e-12)


def test_a_masked_mean_over_no_counted_row_is_zero_not_nan():
    assert masked_mean(torch.tensor([3.0, 4.0]), torch.zeros(2)).item() == 0.0


# --- the step with BatchNorm (item 1, b) -------------------------------------------------------------------------

def _step_setup(method, n_old=4, n_new=2, batch=6, seed=0, dtype=torch.float32):
    """As tests/test_official_step.py: a tiny hybrid net (ResNet-18 of width 4 + the tiny ViT, drop_path 0)
    with the official head layout, a teacher it has moved away from, and a batch with both new classes;
    everything floating in ``dtype``."""
    torch.manual_seed(seed)
    layout = official.head_layout(method, n_old, n_new)
    net = build_network(_params().model, 1, layout.n_outputs, method.backbone)
    teacher = copy.deepcopy(net).eval().requires_grad_(False)
    with torch.no_grad():
        for param in net.backbone.parameters():
            param.add_(0.05 * torch.randn_like(param))
    centers = torch.randn(n_old, net.feature_dim)
    pr_centers = torch.cat([centers, torch.randn(n_new, net.feature_dim)])
    x, xs = torch.randn(batch, 1, 8, 8), torch.randn(batch, 1, 8, 8)
    y = n_old + torch.arange(batch) % n_new
    net, teacher = net.to(dtype), teacher.to(dtype)
    old = OldKnowledge(teacher=teacher, centers=centers.to(dtype), radius=0.5)
    task = official.OfficialTask(layout, identity_transfer(net.feature_dim, dtype=dtype),
                                 official.key_encoder_buffers(net.backbone), proto_batch=16, labels_checked=True)
    return net, old, pr_centers.to(dtype), x.to(dtype), xs.to(dtype), y, task


def _grad_floor(net) -> float:
    """A millionth of the largest gradient of ``net``: the scale for a tensor whose gradient is rounding noise
    (ConViT's pos_proj bias gets ~1e-18 in float64)."""
    return 1e-6 * max(p.grad.abs().max().item() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_the_hybrid_backbone_with_a_row_mask_is_the_backbone_on_the_kept_rows(dtype):
    """BatchNorm in train mode: statistics and running-statistic updates over the kept rows only; dropped rows
    get exactly zero gradient, through the statistics too."""
    method = _params().method["ours_official"]
    net = _step_setup(method, dtype=dtype)[0].train()
    compact_net = copy.deepcopy(net)
    torch.manual_seed(1)
    x = torch.randn(10, 1, 8, 8, dtype=dtype)
    mask = torch.tensor([1.0, 1, 0, 1, 0, 0, 1, 1, 0, 1], dtype=dtype)
    kept, rtol = mask.bool(), NETWORK_RTOL[dtype]
    xm, xc = _leaf(x), _leaf(x[kept])
    out_m, out_c = net(xm, row_mask=mask), compact_net(xc)
    for key in ("cls", "patches", "logits"):
        assert_near(out_m[key][kept], out_c[key], rtol, msg=key)
    for (name, a), (_, b) in zip(net.backbone.named_buffers(), compact_net.backbone.named_buffers()):
        if name.endswith("num_batches_tracked"):
            assert torch.equal(a, b), name  # integer counts
        else:
            assert_near(a, b, rtol, msg=name)
    (out_m["logits"][kept].square().sum() + out_m["cls"][kept].sum()).backward()
    (out_c["logits"].square().sum() + out_c["cls"].sum()).backward()
    assert torch.all(xm.grad[~kept] == 0)
    assert_near(xm.grad[kept], xc.grad, rtol, msg="input gradient")
    floor = _grad_floor(compact_net)
    for (name, a), (_, b) in zip(net.named_parameters(), compact_net.named_parameters()):
        assert_near(a.grad, b.grad, rtol, floor, msg=name)
    net.eval()  # eval mode: running statistics, rows independent; the mask changes nothing
    assert_near(net(x, row_mask=mask)["cls"][kept], net(x[kept])["cls"], rtol, msg="eval")


# Closeness of the step's outputs, static against compacted: (terms other than ce, ce and the total, gradients).
STEP_RTOL = {torch.float64: (1e-10, REDUCTION_RTOL, 1e-5), torch.float32: (1e-4, 1e-4, 1e-4)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", ["ours_official", "fcs"])
def test_the_static_step_gives_the_compacted_steps_terms_gradients_and_tallies(name, dtype):
    method = _params().method[name]
    setup = _step_setup(method, dtype=dtype)
    results = {}
    for static in (False, True):
        net, old, pr_centers, x, xs, y, task = copy.deepcopy(setup)
        net.train()
        torch.manual_seed(7)
        gen = torch.Generator().manual_seed(3)
        loss, terms, logits, targets = official.official_step(net, x, xs, y, method, task, old, pr_centers, gen,
                                                              static=static)
        loss.backward()
        results[static] = (loss, terms, logits, targets, net, task, gen.get_state())
    (loss_c, terms_c, logits_c, targets_c, net_c, task_c, gen_c) = results[False]
    (loss_s, terms_s, logits_s, targets_s, net_s, task_s, gen_s) = results[True]
    rtol_terms, rtol_ce, rtol_grad = STEP_RTOL[dtype]
    assert torch.equal(gen_c, gen_s)  # the same draws
    batch = setup[3].shape[0]
    assert targets_s.shape[0] == 4 * batch + method.mixup_rounds * batch  # 4B + R B rows, whatever is kept
    counted = targets_s >= 0
    assert 4 * batch < targets_c.shape[0] < targets_s.shape[0]  # some candidates kept, some dropped
    assert torch.equal(targets_s[counted], targets_c) and int(counted.sum()) == targets_c.shape[0]
    assert set(targets_s[~counted].tolist()) == {official.DROPPED_TARGET}
    assert_near(logits_s[counted], logits_c, NETWORK_RTOL[dtype], msg="logits")
    assert set(terms_s) == set(terms_c)
    for key in terms_c:
        assert_near(terms_s[key], terms_c[key], rtol_ce if key == "ce" else rtol_terms, msg=key)
    assert_near(loss_s, loss_c, rtol_ce, msg="loss")
    floor = _grad_floor(net_c)
    for (pname, a), (_, b) in zip(net_s.named_parameters(), net_c.named_parameters()):
        assert_near(a.grad, b.grad, rtol_grad, floor, msg=pname)
    assert_near(task_s.transfer.weight.grad, task_c.transfer.weight.grad, rtol_grad, msg="transfer")
    for (bname, a), (_, b) in zip(net_s.named_buffers(), net_c.named_buffers()):
        assert_near(a.double(), b.double(), NETWORK_RTOL[dtype], msg=bname)


# --- colour jitter (item 2, c) -----------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("strengths", [(0.4, 0.4, 0.4, 0.4), (0.5, 0.5, 0.0, 0.0), (0.0, 0.0, 0.0, 0.3)])
def test_static_colour_jitter_is_the_grouped_one(channels, strengths):
    x = torch.rand(32, channels, 6, 6, generator=torch.Generator().manual_seed(1))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    grouped = augment.color_jitter(x, g1, *strengths)
    static = augment.color_jitter(x, g2, *strengths, static=True)
    assert torch.equal(g1.get_state(), g2.get_state())  # the same draws
    torch.testing.assert_close(static, grouped, rtol=0.0, atol=PIXEL_ATOL)


def test_the_static_strong_view_is_the_grouped_one():
    spec = augment.AugmentSpec(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    a = augment.strong_view(x, spec, 8, torch.Generator().manual_seed(4))
    b = augment.strong_view(x, spec, 8, torch.Generator().manual_seed(4), static=True)
    torch.testing.assert_close(b, a, rtol=0.0, atol=PIXEL_ATOL / min(spec.std))  # normalised: / std
