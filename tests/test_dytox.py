"""DyTox (Table 4) and DyTox + PKS: the network's growth, the losses and the exemplar herding, on numbers
worked by hand in the comments (docs/dytox.md)."""

import copy
import math

import numpy as np
import pytest
import torch

from ncil.methods.dytox import (DyToxLossConfig, classification_loss, divergence_loss, divergence_targets,
                                dytox_pks_loss, kd_loss, kd_weight, loss_terms, total_loss)
from ncil.methods.exemplars import herding_order, memory_per_class, merge_memory, reduce_memory, select_exemplars
from ncil.methods.pks import pks_loss, pks_loss_code
from ncil.models.dytox import DyToxNet, apply_phase, block_parameter_count, parameter_count, phase_trainable
from ncil.pipeline.config import ModelConfig

LN2, LN3 = math.log(2.0), math.log(3.0)
TINY = ModelConfig(name="vit", img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2)
PAPER = ModelConfig(name="vit", img_size=32, patch_size=4, embed_dim=384, depth=5, num_heads=12)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def tiny_net(classes=(2,), seed=0):
    torch.manual_seed(seed)
    net = DyToxNet(TINY, 3, classes[0])
    for c in classes[1:]:
        net.expand(c)
    return net


# --- the divergence head ------------------------------------------------------------------------------

def test_divergence_loss_on_two_samples_by_hand():
    # K_old = 3 old classes, the task brings classes 3 and 4: the head has 3 columns [old, class 3, class 4].
    # Sample A has old class 1 -> target column 0 -> one-hot (1, 0, 0); sample B has class 4 -> column 2 -> (0, 0, 1).
    targets = torch.tensor([1, 4])
    assert divergence_targets(targets, n_old=3).tolist() == [0, 2]
    # Logits: sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4, sigmoid(0) = 1/2. Binary cross-entropy per element:
    #   A: (ln 3, target 1) -> -log(3/4) = log(4/3); (-ln 3, target 0) -> -log(3/4) = log(4/3); (0, 0) -> log 2.
    #   B: (0, 0) -> log 2; (ln 3, 0) -> -log(1/4) = log 4; (ln 3, 1) -> log(4/3).
    # Sum = 3 log(4/3) + 2 log 2 + log 4 = 10 log 2 - 3 log 3; mean over the 2 x 3 elements:
    #   (10 * 0.693147 - 3 * 1.098612) / 6 = (6.931472 - 3.295837) / 6 = 0.605939.
    logits = t([[LN3, -LN3, 0.0], [0.0, LN3, LN3]])
    expected = (10 * LN2 - 3 * LN3) / 6
    assert expected == pytest.approx(0.605939, abs=1e-6)
    assert divergence_loss(logits, targets, n_old=3).item() == pytest.approx(expected, rel=1e-6)
    # In the total it weighs lambda_div = 0.1 -> 0.0605939 (the student's head has 3 columns, K_tot = 5).
    student = {"logits": torch.zeros(2, 5), "div_logits": logits.float()}
    terms = loss_terms(student, targets, DyToxLossConfig())
    assert terms["div"].item() == pytest.approx(0.1 * expected, rel=1e-6)
    assert "kd" not in terms and terms["clf"].item() == pytest.approx(LN2, rel=1e-6)  # no teacher: alpha = 0


def test_divergence_targets_from_soft_targets_sum_the_old_mass():
    soft = t([[0.2, 0.3, 0.0, 0.5], [0.0, 0.0, 0.6, 0.4]])  # K_old = 2, new classes 2 and 3
    assert divergence_targets(soft, n_old=2).tolist() == [[0.5, 0.0, 0.5], [0.0, 0.6, 0.4]]


# --- the distillation and the combination -------------------------------------------------------------

def test_kd_by_hand_and_its_reductions():
    # One row, K_old = 2: teacher logits (ln 3, 0) -> p_old = (3/4, 1/4); student's old columns (0, 0) -> (1/2, 1/2).
    # KL = 3/4 log(3/2) + 1/4 log(1/2) = 0.304099 - 0.173287 = 0.130812. The released reduction ("mean") divides
    # by B x K_old = 2 -> 0.065406; "batchmean" by B = 1 -> 0.130812. The student's 3rd column (new) is ignored.
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    student, teacher = t([[0.0, 0.0, 5.0]]), t([[LN3, 0.0]])
    assert kd_loss(student, teacher).item() == pytest.approx(kl / 2, rel=1e-6)
    assert kd_loss(student, teacher, reduction="batchmean").item() == pytest.approx(kl, rel=1e-6)
    # tau = 2: p_old = softmax(ln 3 / 2, 0) = (sqrt 3, 1) / (sqrt 3 + 1); KL x tau^2 = 4 x ...
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(4 * kl2 / 2, rel=1e-6)
    assert kd_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)


def test_alpha_is_the_share_of_old_classes():
    assert kd_weight(0, 10) == 0.0 and kd_weight(10, 20) == 0.5 and kd_weight(90, 100) == 0.9
    with pytest.raises(ValueError):
        kd_weight(10, 10)


def test_total_by_hand_one_row():
    # K_old = 2, C_t = 2, alpha = 2/4 = 0.5; every student logit 0, target class 3, teacher logits (ln 3, 0).
    #   (1 - alpha) L_clf = 0.5 x log 2 (each of the 4 BCE elements at logit 0 is log 2)   = 0.346574
    #   alpha L_kd        = 0.5 x 0.130812 / 2 (the KD example above)                     = 0.032703
    #   0.1 L_div         = 0.1 x log 2 (3 divergence logits at 0)                         = 0.069315
    #   total                                                                              = 0.448592
    student = {"logits": torch.zeros(1, 4), "div_logits": torch.zeros(1, 3)}
    teacher = {"logits": t([[LN3, 0.0]]).float()}
    terms = loss_terms(student, torch.tensor([3]), DyToxLossConfig(), teacher)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert terms["clf"].item() == pytest.approx(0.5 * LN2, rel=1e-6)
    assert terms["kd"].item() == pytest.approx(0.5 * kl / 2, rel=1e-6)
    assert terms["div"].item() == pytest.approx(0.1 * LN2, rel=1e-6)
    assert total_loss(terms).item() == pytest.approx(0.448592, abs=1e-6)
    assert "div" not in loss_terms(student, torch.tensor([3]), DyToxLossConfig(), None, finetuning=True)


def test_classification_bce_is_the_mean_over_all_elements():
    # Row (ln 3, -ln 3), target class 0: log(4/3) + log(4/3); mean over 2 elements = log(4/3).
    assert classification_loss(t([[LN3, -LN3]]), torch.tensor([0])).item() == pytest.approx(math.log(4 / 3))
    # Softmax cross-entropy instead: -log(softmax(ln 3, -ln 3)[0]) = -log(9/10) = log(10/9).
    assert classification_loss(t([[LN3, -LN3]]), torch.tensor([0]), "ce").item() == pytest.approx(math.log(10 / 9))


# --- DyTox + PKS differs from DyTox in the distillation term only -------------------------------------

def _student_teacher(seed=0):
    teacher_net = tiny_net((2,), seed)
    student_net = copy.deepcopy(teacher_net)
    student_net.expand(3)
    with torch.no_grad():  # let the student drift from the teacher, so that no term is trivially 0
        for p in student_net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)))
    teacher_net.eval()
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        teacher = teacher_net(x)
    student_net.eval()
    return student_net(x), teacher, torch.tensor([0, 1, 2, 3, 4, 2])


def test_dytox_and_dytox_pks_share_every_term_but_the_distillation():
    student, teacher, y = _student_teacher()
    kd_terms = loss_terms(student, y, DyToxLossConfig(distillation="kd"), teacher)
    pks_terms = loss_terms(student, y, DyToxLossConfig(distillation="pks"), teacher)
    assert set(kd_terms) == {"clf", "kd", "div"} and set(pks_terms) == {"clf", "pks", "div"}
    for name in ("clf", "div"):  # the same tensors, bit for bit: (1 - alpha) L_clf and 0.1 L_div
        assert torch.equal(kd_terms[name], pks_terms[name]), name
    # With the distillation term zeroed, or removed, the two totals are the same number, bit for bit.
    zero = torch.zeros(())
    assert torch.equal(total_loss({**kd_terms, "kd": zero}), total_loss({**pks_terms, "pks": zero}))
    assert torch.equal(total_loss({k: v for k, v in kd_terms.items() if k != "kd"}),
                       total_loss({k: v for k, v in pks_terms.items() if k != "pks"}))
    # ... and the two distillation terms differ on a generic input.
    assert kd_terms["kd"].item() > 0 and pks_terms["pks"].item() > 0
    assert abs(kd_terms["kd"].item() - pks_terms["pks"].item()) > 1e-3
    # kd+pks (method-spec 5.7's "added on top" reading) is the sum of both.
    both = loss_terms(student, y, DyToxLossConfig(distillation="kd+pks"), teacher)
    assert torch.equal(both["kd"], kd_terms["kd"]) and torch.equal(both["pks"], pks_terms["pks"])


def test_pks_term_is_eq_2_3_on_the_encoder_patches_and_the_task_embedding():
    student, teacher, y = _student_teacher()
    s_cls, t_cls = student["embeddings"][:, -1], teacher["embeddings"][:, -1]
    literal = DyToxLossConfig(distillation="pks", cls_pairing="last")
    assert torch.equal(dytox_pks_loss(student, teacher, literal),
                       pks_loss(s_cls, student["patches"], t_cls, teacher["patches"]))
    code = DyToxLossConfig(distillation="pks", pks_form="code", pks_p=1)
    assert torch.equal(dytox_pks_loss(student, teacher, code),
                       pks_loss_code(s_cls, student["patches"], teacher["patches"], p=1))
    terms = loss_terms(student, y, literal, teacher)
    assert terms["pks"].item() == pytest.approx(10 * dytox_pks_loss(student, teacher, literal).item(), rel=1e-6)


def test_pks_same_token_pairing_by_hand():
    # tests/test_pks.py's Eq. 3 example: B = 2, N = 3, D = 2. Weights from the student's newest embedding e_t:
    # sample 0, e_t = (0, 0), patches at distances 5, 10, 25 -> w = 1, 0.5, 0.2; sample 1, e_t = (1, 1),
    # distances 2, 5, 10 -> w = 1, 0.4, 0.2. Patch distances to the teacher: (5, 2, 10) and (0, 13, 5).
    # Patch terms: 1*5 + 0.5*2 + 0.2*10 = 8 and 0.4*13 + 0.2*5 = 6.2.
    s_patches = t([[[3.0, 4.0], [8.0, 6.0], [7.0, 24.0]], [[1.0, 3.0], [5.0, 4.0], [-5.0, 9.0]]])
    deltas = t([[[3.0, 4.0], [0.0, 2.0], [6.0, 8.0]], [[0.0, 0.0], [5.0, 12.0], [-3.0, 4.0]]])
    t_e1 = t([[3.0, -4.0], [1.0, 0.0]])  # the teacher's only embedding e_1
    s_e1 = t_e1 + t([[3.0, 4.0], [0.0, 0.0]])  # the student's e_1: 5 and 0 away from the teacher's
    s_e2 = t([[0.0, 0.0], [1.0, 1.0]])  # the student's newest embedding
    student = {"patches": s_patches, "embeddings": torch.stack([s_e1, s_e2], dim=1)}
    teacher = {"patches": s_patches - deltas, "embeddings": t_e1.unsqueeze(1)}
    # same_token: [CLS] term ||e_1(student) - e_1(teacher)|| = 5, 0 -> (8 + 5 + 6.2 + 0) / 2 = 9.6.
    assert dytox_pks_loss(student, teacher, DyToxLossConfig()).item() == pytest.approx(9.6, rel=1e-8)  # eps = 1e-8 in Eq. 2
    # last: ||e_2(student) - e_1(teacher)|| = ||(-3, 4)|| = 5 and ||(0, 1)|| = 1 -> (13 + 7.2) / 2 = 10.1.
    assert dytox_pks_loss(student, teacher, DyToxLossConfig(cls_pairing="last")).item() == pytest.approx(10.1)


def test_a_dytox_pks_training_step_reads_nothing_on_the_host():
    # Forward of the student and the frozen teacher, every loss term, backward and an AdamW step, counted by
    # ncil.learning.opcount (item(), data-dependent shapes, boolean masks, tolist/numpy/cpu reads): none.
    from ncil.learning.opcount import StepCounter

    teacher_net = tiny_net((2,))
    student_net = copy.deepcopy(teacher_net)
    student_net.expand(3)
    apply_phase(student_net, "task")
    teacher_net.eval().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in student_net.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-6)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 2])
    cfg = DyToxLossConfig(distillation="kd+pks")

    def step():
        with torch.no_grad():
            teacher = teacher_net(x)
        loss = total_loss(loss_terms(student_net(x), y, cfg, teacher))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with torch.no_grad():
        student_net(x)  # builds GPSA's relative positions; AdamW's state is made under the counter (a host value)
    with StepCounter().counting() as counter:
        step()
    assert dict(counter.syncs) == {}, dict(counter.sites)
    assert sum(counter.ops.values()) > 100


# --- the network: expansion and parameter counts ------------------------------------------------------

def test_block_counts_match_the_paper_vit():
    assert block_parameter_count(384, 12, gpsa=True) == 1_773_372  # method-spec 3.3
    assert block_parameter_count(384, 12, gpsa=False) == 1_773_312


def test_parameter_count_after_one_two_three_tasks_by_hand():
    # Tiny config: D = 8, 2 heads, 2 GPSA blocks, 8x8 images in 4x4 patches (N = 4), 3 channels.
    #   patch embedding 3*16*8 + 8 = 392; positional embedding 4*8 = 32;
    #   GPSA block 12 D^2 + 10 D + 5 heads = 768 + 80 + 10 = 858, two of them 1716; TAB 12 D^2 + 10 D = 848
    #   -> shared part 392 + 32 + 1716 + 848 = 2988.
    #   Per task: token D = 8; classifier LayerNorm 2D = 16 plus (D + 1)|C_i| = 9|C_i|.
    #   From task 2 on, the divergence head: 16 + 9 (|C_t| + 1).
    # Tasks of 2, 3, 1 classes:
    #   t = 1: 2988 + 8 + (16 + 18)                                              = 3030
    #   t = 2: 2988 + 16 + (16 + 18) + (16 + 27) + divergence (16 + 36)         = 3133
    #   t = 3: 2988 + 24 + 34 + 43 + (16 + 9) + divergence (16 + 18)            = 3148
    expected = [3030, 3133, 3148]
    net = tiny_net((2,))
    sizes = [2, 3, 1]
    for i, want in enumerate(expected):
        if i:
            net.expand(sizes[i])
        assert n_params(net) == want == parameter_count(TINY, 3, sizes[: i + 1])
        assert net.n_tasks == i + 1 and net.classes_per_task == sizes[: i + 1]
    assert parameter_count(TINY, 3, sizes, divergence=False) == 3148 - 34


def test_parameter_count_at_paper_size_matches_dytox_table():
    # DyTox's CIFAR table (#P in millions, truncated): 10.73 (10 steps), 10.74 (20), 10.77 (50), all without the
    # training-only divergence head: 10,684,716 (the paper ViT) - 768 (no final LayerNorm) + tokens + classifiers.
    # 10 x 10: + 9 * 384 + 10 * (768 + 385 * 10) = 10,683,948 + 3,456 + 46,180 = 10,733,584.
    counts = {steps: parameter_count(PAPER, 3, [100 // steps] * steps, divergence=False) for steps in (10, 20, 50)}
    assert counts == {10: 10_733_584, 20: 10_745_104, 50: 10_779_664}
    assert [math.floor(c / 1e4) / 100 for c in counts.values()] == [10.73, 10.74, 10.77]
    torch.manual_seed(0)
    net = DyToxNet(PAPER, 3, 10)
    for _ in range(9):
        net.expand(10)
    assert n_params(net) == parameter_count(PAPER, 3, [10] * 10) == 10_733_584 + 768 + 385 * 11


def test_expansion_keeps_old_tokens_and_heads_and_old_logits_ignore_the_new_token():
    net = tiny_net((2, 3))
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    net.eval()
    old_logits = net(x)["logits"]
    net.expand(2, generator=torch.Generator().manual_seed(7))
    for key, value in before.items():
        if not key.startswith("divergence."):  # the divergence head is replaced at every expansion
            assert torch.equal(net.state_dict()[key], value), key
    out = net(x)
    assert out["logits"].shape == (4, 7) and out["div_logits"].shape == (4, 3) and out["embeddings"].shape == (4, 3, 8)
    assert torch.equal(out["logits"][:, :5], old_logits)  # classifier i reads e_i only
    assert torch.equal(out["cls"], out["embeddings"][:, -1])
    new = net.task_tokens[-1]
    assert new.shape == (1, 1, 8) and float(new.detach().abs().max()) <= 2.0 and not torch.equal(new, net.task_tokens[-2])
    again = tiny_net((2, 3))
    again.expand(2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again.task_tokens[-1], new)  # the seeded draw is reproducible


def test_freezing_per_phase():
    net = tiny_net((2, 3, 4))
    plan = phase_trainable("task", 3)
    assert plan["tokens"] == [False, False, True] and plan["heads"] == [False, False, True] and plan["encoder"]
    apply_phase(net, "task")
    assert [p.requires_grad for p in net.task_tokens] == [False, False, True]
    assert not any(p.requires_grad for p in net.heads[0].parameters())
    assert all(p.requires_grad for p in net.heads[2].parameters()) and net.pos_embed.requires_grad
    assert all(p.requires_grad for p in net.divergence.parameters())
    apply_phase(net, "finetune")  # encoder frozen; every token and classifier trains again; no divergence
    assert not net.pos_embed.requires_grad and not any(p.requires_grad for p in net.blocks.parameters())
    assert not any(p.requires_grad for p in net.patch_embed.parameters())
    assert all(p.requires_grad for p in net.task_tokens) and all(p.requires_grad for p in net.heads.parameters())
    assert all(p.requires_grad for p in net.tab.parameters()) and not any(p.requires_grad for p in net.divergence.parameters())
    apply_phase(net, "base")
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError):
        phase_trainable("warmup", 2)


# --- the exemplar memory ------------------------------------------------------------------------------

# One class, four 2-D points with dyadic coordinates (exact in float64), mirror images in the diagonal:
# x0 = (1, 0), x1 = (0, 1), x2 = (0.5, 0.75), x3 = (0.75, 0.5); class mean mu = (0.5625, 0.5625).
HERD = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.75], [0.75, 0.5]])


def test_icarl_herding_by_hand_with_ties_to_the_lowest_index():
    # k = 1: ||mu - x||^2 = 0.5078125 (x0, x1), 0.0390625 (x2, x3): a tie, x2 (lower index) first.
    # k = 2: ||mu - (x2 + x)/2||^2: x0 -> (0.75, 0.375): 0.0703125; x1 -> (0.25, 0.875): 0.1953125;
    #        x3 -> (0.625, 0.625): 0.0078125 -> x3.
    # k = 3: (x2 + x3 + x)/3: x0 -> (0.75, 0.41667), x1 -> (0.41667, 0.75): equal distances 0.0564236, x0 first.
    # k = 4: x1.
    assert herding_order(HERD, 4, normalize=False).tolist() == [2, 3, 0, 1]
    assert herding_order(HERD, 2, normalize=False).tolist() == [2, 3]
    assert herding_order(HERD, 9, normalize=False).tolist() == [2, 3, 0, 1]  # a class smaller than m: all of it


def test_released_herding_by_hand():
    # w = mu; scores w . x: (0.5625, 0.5625, 0.703125, 0.703125) -> x2; w <- w + mu - x2 = (0.625, 0.375)
    # scores (0.625, 0.375, 0.59375, 0.65625) -> x3; w <- (0.4375, 0.4375)
    # scores (0.4375, 0.4375, 0.546875, 0.546875) -> x2 again (no new exemplar); w <- (0.5, 0.25)
    # scores (0.5, 0.25, 0.4375, 0.5) -> tie x0/x3, x0; w <- (0.0625, 0.8125) -> x1. Order 2, 3, 0, 1.
    assert herding_order(HERD, 4, normalize=False, rule="code").tolist() == [2, 3, 0, 1]


def test_normalised_herding_is_herding_on_unit_features_and_deterministic():
    g = np.random.default_rng(0)
    features = g.normal(size=(30, 5)) * g.uniform(0.5, 3.0, size=(30, 1))
    unit = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-8)
    order = herding_order(features, 10)
    assert order.tolist() == herding_order(unit, 10, normalize=False).tolist() == herding_order(features, 10).tolist()
    assert len(set(order.tolist())) == 10


def test_select_exemplars_per_class_in_the_callers_index_space():
    # Class 7 holds rows 1, 3, 5, 7 (the HERD points in that order) and class 2 rows 0, 2, 4, 6 (the same points).
    features = np.empty((8, 2))
    labels = np.array([2, 7, 2, 7, 2, 7, 2, 7])
    features[1::2] = HERD
    features[0::2] = HERD
    memory = select_exemplars(features, labels, 3, normalize=False)
    # Per class: herding order 2, 3, 0 of its own rows -> class 2: rows 4, 6, 0; class 7: rows 5, 7, 1.
    assert memory["index"].tolist() == [4, 6, 0, 5, 7, 1]
    assert memory["label"].tolist() == [2, 2, 2, 7, 7, 7] and memory["rank"].tolist() == [0, 1, 2, 0, 1, 2]
    reduced = reduce_memory(memory, 1)
    assert reduced["index"].tolist() == [4, 5] and reduced["label"].tolist() == [2, 7]
    later = select_exemplars(HERD, np.array([9, 9, 9, 9]), 2, normalize=False)
    merged = merge_memory(reduced, later)
    assert merged["index"].tolist() == [4, 5, 2, 3] and merged["label"].tolist() == [2, 7, 9, 9]
    with pytest.raises(ValueError):
        merge_memory(memory, memory)


def test_memory_per_class_policies():
    assert memory_per_class(10) == memory_per_class(100) == 20  # the AAAI paper: 20 of each learned class
    assert memory_per_class(10, policy="budget") == 200 and memory_per_class(100, policy="budget") == 20
