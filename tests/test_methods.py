"""The methods as configured: which loss terms each uses, the frozen old model, recipes, backbones."""

import copy
import math

import pytest
import torch

from ncil.methods.baseline import rotate_batch
from ncil.methods.objective import OldKnowledge, step_loss
from ncil.methods.pks import pks_loss
from ncil.models.network import build_network
from ncil.pipeline.config import ConfigError, MethodConfig, ModelConfig, parse_params
from ncil.pipeline.hydra_conf import compose

ALL_METHODS = ["finetune", "joint", "lwf", "baseline", "pks", "pr", "ours", "ours_w_uniform", "ours_w_direct",
               "pass_resnet18", "sdc", "adc", "ldc"]
TINY = ModelConfig("vit", img_size=8, patch_size=2, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, drop_path=0.0)


def _methods() -> dict:
    return parse_params(compose([f"method=[{','.join(ALL_METHODS)}]"])).method


def _setup(method: MethodConfig, n_old=2, n_new=2):
    torch.manual_seed(0)
    rot = 4 if method.rotation else 1
    net = build_network(TINY, 1, rot * (n_old + n_new), method.backbone)
    teacher = copy.deepcopy(net).eval().requires_grad_(False)
    centers = torch.randn(n_old, net.feature_dim)
    old = OldKnowledge(teacher=teacher, centers=centers, radius=0.5)
    pr_centers = torch.cat([centers, torch.randn(n_new, net.feature_dim)])
    x = torch.randn(6, 1, 8, 8)
    y = torch.tensor([2, 3, 2, 3, 3, 2])
    return net, teacher, old, pr_centers, x, y


@pytest.mark.parametrize(
    "name, expected",
    [
        ("finetune", {"ce"}),
        ("joint", {"ce"}),
        ("lwf", {"ce", "fkd"}),
        ("baseline", {"ce", "fkd", "proto"}),
        ("pks", {"ce", "fkd", "proto", "pks"}),
        ("pr", {"ce", "fkd", "proto", "pr"}),
        ("ours", {"ce", "fkd", "proto", "pks", "pr"}),
        ("ours_w_uniform", {"ce", "fkd", "proto", "pks", "pr"}),
        ("ours_w_direct", {"ce", "fkd", "proto", "pks", "pr"}),
        ("pass_resnet18", {"ce", "fkd", "proto"}),
        # drift compensation: cross-entropy and feature distillation in the step; the prototypes move after the task
        ("sdc", {"ce", "fkd"}),
        ("adc", {"ce", "fkd"}),
        ("ldc", {"ce", "fkd"}),
    ],
)
def test_each_method_uses_its_loss_terms(name, expected):
    method = _methods()[name]
    net, _, old, pr_centers, x, y = _setup(method)
    gen = torch.Generator().manual_seed(0)
    loss, terms, logits, targets = step_loss(net, x, y, method, old, pr_centers, gen)
    assert set(terms) == expected
    assert loss.item() == pytest.approx(float(sum(terms.values())), rel=1e-5)
    rows = 24 if method.rotation else 6
    assert logits.shape[0] == rows and targets.shape == (rows,)
    # In task 0 there is no old knowledge: the cross-entropy alone.
    _, terms0, _, _ = step_loss(net, x, y, method, None, None, gen)
    assert set(terms0) == {"ce"}


# float32's machine epsilon: the unit of the rounding differences between two kernels of one function.
EPS32 = torch.finfo(torch.float32).eps


class _OneUlpUp(torch.nn.Module):
    """A backbone whose every output is moved one float32 step up: what another CPU's kernels may return."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return tuple(torch.nextafter(t, torch.full_like(t, math.inf)) for t in self.inner(x))


@pytest.mark.parametrize("teacher_rounds_otherwise", [False, True])
def test_identical_student_and_teacher_give_zero_distillation(teacher_rounds_otherwise):
    method = _methods()["ours"]
    net, teacher, old, pr_centers, x, y = _setup(method)
    net.eval()  # no drop-path: student and teacher compute the same function
    if teacher_rounds_otherwise:
        teacher.backbone = _OneUlpUp(teacher.backbone)
    _, terms, _, _ = step_loss(net, x, y, method, old, pr_centers, torch.Generator().manual_seed(0))
    # The student's forward runs with gradients, the teacher's under no_grad: CPU builds may take other
    # kernels for the two (an AVX-512 Xeon gave fkd = 2.8e-6 here), so "zero" is zero up to rounding. Both
    # terms are norms of student - teacher with weights from the student alone, so an error of k ulp per
    # feature bounds each term by k * EPS32 times the term against a zero teacher; k = 64 covers one
    # block's chain of rounded reductions with room to spare, and a real mismatch (another model, drop-path
    # on) gives terms of the order of that scale itself, some 1e5 times the bound.
    with torch.no_grad():
        cls, patches = net.backbone(rotate_batch(x, y)[0] if method.rotation else x)  # (R, D), (R, N, D)
    scale = {"fkd": method.feature_kd * torch.linalg.vector_norm(cls).item(),
             "pks": method.pks * pks_loss(cls, patches, torch.zeros_like(cls), torch.zeros_like(patches),
                                          weighting=method.pks_weighting, p=method.pks_p).item()}
    assert scale["fkd"] > 1 and scale["pks"] > 1  # the bound below is far from the terms' own size
    assert terms["fkd"] <= 64 * EPS32 * scale["fkd"] and terms["pks"] <= 64 * EPS32 * scale["pks"]
    assert terms["pr"] > 0.0  # PR pairs different rows


def test_old_model_never_changes_and_stays_in_eval_mode():
    method = _methods()["ours"]
    net, teacher, old, pr_centers, x, y = _setup(method)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        net.train()
        loss, *_ = step_loss(net, x, y, method, old, pr_centers, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(teacher.parameters(), net.parameters()))


def test_step_loss_is_deterministic_given_the_generator():
    method = _methods()["ours"]
    net, _, old, pr_centers, x, y = _setup(method)
    net.eval()
    a = step_loss(net, x, y, method, old, pr_centers, torch.Generator().manual_seed(5))[1]
    b = step_loss(net, x, y, method, old, pr_centers, torch.Generator().manual_seed(5))[1]
    assert a == b


def test_resnet18_backbone_contract():
    net = build_network(TINY, 1, 8, "resnet18")
    out = net(torch.randn(2, 1, 8, 8))
    assert out["cls"].shape == (2, 512) and out["patches"].shape == (2, 1, 512) and out["logits"].shape == (2, 8)
    assert torch.allclose(out["cls"], out["patches"].mean(1))


@pytest.mark.parametrize("img_size, side", [(32, 4), (64, 8), (224, 7)])
def test_resnet18_backbone_stem_follows_the_image_size(img_size, side):
    """CIFAR stem below 128 pixels (3x3/1, no pool: 32 -> 4x4 and TinyImageNet's 64 -> 8x8 at stage 4), the ImageNet
    stem from 128 (7x7/2 + 3x3/2 max-pool: 224 -> 7x7): 11,176,512 parameters either way but conv1's 3 x 64 x (49 - 9)
    = 7,680 more for 7x7 (torchvision's 11,689,512 less its 512 x 1000 + 1000 fc). The CIFAR stem's state-dict keys
    are those of every checkpoint written before the ImageNet stem existed (body.3 = layer1)."""
    from ncil.models.resnet import ResNet18

    torch.manual_seed(0)
    net = ResNet18(3, img_size).eval()
    with torch.no_grad():
        pooled, patches = net(torch.randn(1, 3, img_size, img_size))
    assert patches.shape == (1, side * side, 512) and pooled.shape == (1, 512)
    imagenet = img_size == 224
    assert sum(t.numel() for t in net.parameters()) == 11_689_512 - 513_000 - (0 if imagenet else 7_680)
    assert net.body[0].kernel_size == ((7, 7) if imagenet else (3, 3))
    first_block = "body.4.0.conv1.weight" if imagenet else "body.3.0.conv1.weight"
    assert first_block in net.state_dict() and net.state_dict()[first_block].shape == (64, 64, 3, 3)


def test_methods_sharing_a_base_recipe_must_agree_on_it():
    data = compose(["method=[baseline,ours]"])
    data["method"]["ours"]["ce_temperature"] = 1.0
    with pytest.raises(ConfigError, match=r"method.ours.base_recipe: 'rotation' is shared with method 'baseline'"):
        parse_params(data)


def test_method_options_are_validated():
    data = compose(["method=[ours]"])
    data["method"]["ours"]["pks_weighting"] = "softmax"
    with pytest.raises(ConfigError, match=r"method.ours.pks_weighting: expected one of"):
        parse_params(data)


def test_bench_step_times_the_full_step_and_its_floor_on_the_same_rows():
    """What ``python -m ncil bench`` reports, not how fast it is: speed is measured by that command
    (for example `python -m ncil bench --method ours`), never asserted in a test."""
    from ncil.learning.step_timing import bench_step

    p = parse_params(compose(["model=vit_digits_tiny", "method=[ours]"]))
    result = bench_step(p, p.method["ours"], batch_size=4, steps=2, warmup=0)
    assert result["rows"] == 16  # 4 rotations of 4 images
    assert result["ratio"] == pytest.approx(result["step_ms"] / result["floor_ms"])
    assert result["median_ratio"] == pytest.approx(result["step_median_ms"] / result["floor_median_ms"])
    assert result["step_ms"] <= result["step_median_ms"] and result["floor_ms"] <= result["floor_median_ms"]
    assert result["images_per_s"] == pytest.approx(4 / (result["step_ms"] / 1e3))
    assert result["threads"] == 1 and result["parameters"] > 0


def test_bench_of_a_dytox_method_times_task_t_with_t_tokens(monkeypatch):
    """``bench --method dytox_pks --tasks T``: the step of task T, the network after T - 1 expansions (its parameter
    count is DyTox's, hand-worked in tests/test_dytox.py) and a teacher of T - 1 tokens; the step computes every
    term of loss_terms (clf, pks, div) on the student's and the teacher's outputs."""
    import ncil.learning.dytox_training  # noqa: F401  (imported first: its module-level loss_terms stays the real one)
    from ncil.learning import step_timing
    from ncil.methods import dytox as dytox_losses
    from ncil.models.dytox import parameter_count
    from ncil.tools.bench import even_split

    assert even_split(100, 10) == [10] * 10 and even_split(100, 20) == [5] * 20 and even_split(10, 4) == [3, 3, 2, 2]
    p = parse_params(compose(["model=vit_digits_tiny", "method=[dytox_pks]"]))
    seen = []
    real_terms = dytox_losses.loss_terms

    def recording_terms(student, targets, cfg, teacher=None, finetuning=False):
        terms = real_terms(student, targets, cfg, teacher, finetuning)
        seen.append((student["embeddings"].shape[1], teacher["embeddings"].shape[1], sorted(terms),
                     int(targets.min()), int(targets.max())))
        return terms

    monkeypatch.setattr(dytox_losses, "loss_terms", recording_terms)
    result = step_timing.bench_dytox_step(p, p.method["dytox_pks"], batch_size=4, classes_per_task=[3, 3, 2, 2],
                                          steps=2, warmup=0)
    assert result["tasks"] == 4 and result["rows"] == 4
    assert result["parameters"] == parameter_count(p.model, p.dataset.channels, [3, 3, 2, 2])
    assert result["ratio"] == pytest.approx(result["step_ms"] / result["floor_ms"])
    # 2 timed steps, 4 tokens in the student, 3 in the teacher; labels of the last task (classes 8 and 9)
    assert [s[:3] for s in seen] == [(4, 3, ["clf", "div", "pks"])] * 2
    assert all(8 <= low <= high <= 9 for *_, low, high in seen)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        step_timing.bench_dytox_step(p, p.method["dytox_pks"], batch_size=4, classes_per_task=[10], steps=1)


@pytest.mark.parametrize(("method", "term_module", "term"), [
    ("efc_pp", "ncil.methods.efc", "efm_penalty"), ("adagauss", "ncil.methods.adagauss", "training_loss")])
def test_bench_of_an_efcil_method_times_its_own_step(method, term_module, term, monkeypatch):
    """``bench --method efc_pp|adagauss``: the step of a task t >= 1 as their loops take it (each timed round calls
    the method's own loss on the student's features of the batch and the frozen old model's; AdaGauss's on the
    latent vectors, S wide), against the floor of the plain forward/backward and the old model's forward; FeCAM,
    which trains nothing after task 0, times task 0's step and says so."""
    import importlib

    from ncil.learning import step_timing

    p = parse_params(compose(["+experiment=digits_efcil", "train.batch_size=12",
                              f"method=[{'adagauss_digits' if method == 'adagauss' else method},fecam]"]))
    module = importlib.import_module(term_module)
    real, shapes = getattr(module, term), []

    def recording(*args, **kwargs):
        shapes.append(tuple(a.shape for a in args if isinstance(a, torch.Tensor))[:3])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, term, recording)
    result = step_timing.bench_step(p, p.method["adagauss" if method == "adagauss" else method], batch_size=12,
                                    steps=2, warmup=0)
    assert result["rows"] == 12 and result["floor_passes"] == "student fwd+bwd + old-model fwd"
    assert result["ratio"] == pytest.approx(result["step_ms"] / result["floor_ms"])
    if method == "efc_pp":  # features (12, 512) of the student and of the old model, E (512, 512)
        assert shapes == [((12, 512), (12, 512), (512, 512))] * 2
    else:  # CE (a 0-dim tensor), latent vectors (12, 8) of the student and of the old model
        assert shapes == [((), (12, 8), (12, 8))] * 2
    fecam = step_timing.bench_step(p, p.method["fecam"], batch_size=12, steps=1, warmup=0)
    assert fecam["task"] == "task 0: FeCAM trains nothing after it" and fecam["rows"] == 12
    assert fecam["floor_passes"] == "student fwd+bwd, no old model"


def test_bench_of_an_official_method_times_its_step_against_the_floor_over_x_prime(monkeypatch):
    """The official step trains on X' = 4B rotated views + the mixup images (method-spec 2.4): the floor
    runs over one such X', the very rows of the step's first draw (the same seed), and the old model too."""
    from types import SimpleNamespace

    from ncil.learning import step_timing

    p = parse_params(compose(["model=vit_digits_tiny", "+model.resnet_width=4", "preset=official",
                              "method=[ours_official]"]))
    sizes = {"student": [], "teacher": []}

    def recording_build(*args, **kwargs):
        net = build_network(*args, **kwargs)
        net.register_forward_pre_hook(lambda m, a: sizes["student"].append(a[0].shape[0]))
        return net

    def recording_deepcopy(net):  # the bench's teacher: a deep copy of the student network
        twin = copy.deepcopy(net)
        twin._forward_pre_hooks.clear()
        twin.backbone.register_forward_pre_hook(lambda m, a: sizes["teacher"].append(a[0].shape[0]))
        return twin

    monkeypatch.setattr(step_timing, "build_network", recording_build)
    monkeypatch.setattr(step_timing, "copy", SimpleNamespace(deepcopy=recording_deepcopy))
    result = step_timing.bench_step(p, p.method["ours_official"], batch_size=4, steps=2, warmup=0)
    rows = result["rows"]
    assert 16 < rows <= 16 + 4 * 4  # 4 rotations of 4 images, then at most 4 rounds x 4 mixup images
    # the student's passes, in order: step 1 (its X'), floor, step 2 (X' of the next draw), floor
    assert len(sizes["student"]) == 4 and sizes["student"][0] == sizes["student"][1] == sizes["student"][3] == rows
    assert len(sizes["teacher"]) == 4 and sizes["teacher"][:2] == [rows, rows]  # one old-model pass each
    assert result["ratio"] == pytest.approx(result["step_ms"] / result["floor_ms"])
    assert result["parameters"] == sum(q.numel() for q in build_network(p.model, 1, 10, "hybrid").backbone.parameters())


def test_official_floor_includes_the_key_encoder_pass_only_with_the_contrastive_loss(monkeypatch):
    """The key encoder is the third backbone pass of an official step (method-spec 5.3): the floor runs it
    over the 4B rotated strong views when the contrastive loss is on, and not for a method without it."""
    from ncil.learning import step_timing
    from ncil.methods import official_step

    calls = []
    real = official_step.key_features
    monkeypatch.setattr(official_step, "key_features", lambda bb, x, buf: calls.append(x.shape[0]) or real(bb, x, buf))
    p = parse_params(compose(["model=vit_digits_tiny", "+model.resnet_width=4", "preset=official",
                              "method=[ours_official]"]))
    step_timing.bench_step(p, p.method["ours_official"], batch_size=4, steps=2, warmup=0)
    assert calls == [16] * 4  # step, floor, step, floor: 4 rotations x 4 strong views each
    calls.clear()
    data = compose(["model=vit_digits_tiny", "+model.resnet_width=4", "preset=official", "method=[ours_official]"])
    data["method"]["ours_official"]["contrastive"] = 0.0
    data["method"]["ours_official"]["contrastive_by_scenario"] = {}
    p = parse_params(data)
    step_timing.bench_step(p, p.method["ours_official"], batch_size=4, steps=2, warmup=0)
    assert calls == []


def test_bench_rounds_alternate_and_keep_every_round(monkeypatch):
    """The two timed functions take turns within every round, after untimed warm-up calls."""
    import itertools

    from ncil.learning import step_timing

    ticks = itertools.count()  # a fake clock: every reading is one second after the last
    monkeypatch.setattr(step_timing.time, "perf_counter", lambda: next(ticks))
    calls = []
    times = step_timing._interleaved_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                             rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert times == {"a": [1, 1, 1], "b": [1, 1, 1]}


def test_freed_memory_is_kept_for_reuse_on_glibc():
    import platform

    from ncil.learning.runtime import keep_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory() is True


@pytest.mark.parametrize("name, expected", [
    ("fcs", {"ce", "con", "fkd", "transfer", "proto"}),
    ("ours_official", {"ce", "con", "fkd", "transfer", "proto", "pks", "pr_offset", "pr_restore"}),
])
def test_each_official_method_uses_its_loss_terms(name, expected):
    """The official preset's methods as configured (conf/method/{fcs,ours_official}.yaml) train with
    ``official_step``: fcs has neither PKS nor PR, ours_official both in code form; task 0 is L_clf + L_con."""
    from ncil.methods import official_step as official
    from ncil.methods.official import identity_transfer

    method = parse_params(compose(["preset=official"])).method[name]
    assert official.is_official(method) and method.pks_form == method.pr_form == "official"
    cfg = ModelConfig("vit", img_size=8, patch_size=2, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0,
                      drop_path=0.0, resnet_width=4)
    torch.manual_seed(0)
    layout = official.head_layout(method, 2, 2)
    net = build_network(cfg, 1, layout.n_outputs, method.backbone)
    teacher = copy.deepcopy(net).eval().requires_grad_(False)
    centers = torch.randn(2, net.feature_dim)
    old = OldKnowledge(teacher=teacher, centers=centers, radius=0.5)
    task = official.OfficialTask(layout, identity_transfer(net.feature_dim), official.key_encoder_buffers(net.backbone), 8)
    x, xs, y = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8), torch.tensor([2, 3, 2, 3, 3, 2])
    gen = torch.Generator().manual_seed(0)
    net.train()
    loss, terms, logits, targets = official.official_step(net, x, xs, y, method, task, old,
                                                          torch.cat([centers, torch.randn(2, net.feature_dim)]), gen)
    assert set(terms) == expected and loss.item() == pytest.approx(float(sum(terms.values())), rel=1e-5)
    assert logits.shape == (targets.shape[0], 4 * 4 + 1) and targets.shape[0] >= 24  # 4B rotated + mixup rows
    layout0 = official.head_layout(method, 0, 4)
    net0 = build_network(cfg, 1, layout0.n_outputs, method.backbone)
    task0 = official.OfficialTask(layout0, identity_transfer(net0.feature_dim), official.key_encoder_buffers(net0.backbone), 8)
    net0.train()
    _, terms0, _, _ = official.official_step(net0, x, xs, y - 2, method, task0, None, None, gen)
    assert set(terms0) == {"ce", "con"}
