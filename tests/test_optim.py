"""The per-task optimiser recipe (ncil.learning.optim, method-spec 5.1 and 5.6) as ``train_task`` uses it."""

import logging
import re

import numpy as np
import pytest
import torch

from ncil.data import arrays
from ncil.learning import optim, training
from ncil.pipeline.config import parse_params
from ncil.pipeline.hydra_conf import compose

TINY = ["model=vit_digits_tiny", "train=smoke", "train.epochs=3", "train.batch_size=16", "method=[ours]",
        "runtime.device=cpu"]
TASKS = [[0, 1, 2, 3], [4, 5]]


def split() -> arrays.Split:
    rng = np.random.RandomState(0)
    return arrays.Split(rng.randint(0, 256, (60, 8, 8, 1)).astype(np.uint8), np.repeat(np.arange(6), 10))


def two_tasks(p):
    """Train tasks 0 and 1 of the tiny digits run (``ours``: rotation, KD, protoAug, PKS, PR)."""
    data, log = split(), logging.getLogger("test")
    job0 = training.TaskJob(0, 1, list(range(10)), TASKS, "rotation", p.method["ours"], {})
    payload0, centers0 = training.train_task(p, job0, data, None, None, log)
    job1 = training.TaskJob(1, 1, list(range(10)), TASKS, "ours", p.method["ours"], {})
    payload1, centers1 = training.train_task(p, job1, data, payload0, centers0, log)
    return payload0, centers0, payload1, centers1


def spy(monkeypatch):
    """Record every (optimizer, scheduler) pair train_task builds, and the epochs its progress bar gets."""
    built, bars = [], []
    real_build, real_progress = optim.build_optimizer, training.EpochProgress

    def build(parameters, recipe):
        pair = real_build(parameters, recipe)
        built.append(pair)
        return pair

    def progress(logger, label, epochs, steps):
        bars.append(epochs)
        return real_progress(logger, label, epochs, steps)

    monkeypatch.setattr(optim, "build_optimizer", build)
    monkeypatch.setattr(training, "EpochProgress", progress)
    return built, bars


@pytest.mark.parametrize("lr_step", [0, 1])
def test_without_base_keys_training_is_bit_identical_to_the_explicit_adam_steplr(lr_step, monkeypatch):
    """The recipe path against the construction train_task used before the recipe (Adam + StepLR or none,
    ``train.epochs`` for every task): same weights, centers and history, bit for bit, over two tasks."""
    p = parse_params(compose([*TINY, f"train.lr_step={lr_step}"]))
    assert optim.task_recipe(p.train, 0) == optim.task_recipe(p.train, 1)
    built, bars = spy(monkeypatch)
    ours = two_tasks(p)
    for optimizer, scheduler in built:
        assert type(optimizer) is torch.optim.Adam
        assert (optimizer.defaults["lr"], optimizer.defaults["weight_decay"]) == (1e-3, 2e-4)
        assert optimizer.defaults["betas"] == (0.9, 0.999) and not optimizer.defaults["amsgrad"]
        if lr_step:
            assert type(scheduler) is torch.optim.lr_scheduler.StepLR
            assert (scheduler.step_size, scheduler.gamma) == (1, 0.1)
        else:
            assert scheduler is None
    assert len(built) == 2 and bars == [3, 3]

    def explicit(parameters, recipe):  # the lines train_task had before ncil.learning.optim was wired in
        optimizer = torch.optim.Adam(parameters, lr=p.train.lr, weight_decay=p.train.weight_decay)
        scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, step_size=p.train.lr_step, gamma=p.train.lr_gamma)
                     if p.train.lr_step else None)
        return optimizer, scheduler

    monkeypatch.setattr(optim, "build_optimizer", explicit)
    reference = two_tasks(p)
    for mine, theirs in ((ours[0], reference[0]), (ours[2], reference[2])):
        assert mine["model"].keys() == theirs["model"].keys()
        assert all(torch.equal(mine["model"][k], theirs["model"][k]) for k in mine["model"])
        assert mine["history"] == theirs["history"] and len(mine["history"]) == p.train.epochs
        assert mine["config"] == theirs["config"]
    for mine, theirs in ((ours[1], reference[1]), (ours[3], reference[3])):
        assert all(np.array_equal(mine[k], theirs[k]) for k in mine)
    lrs = [h["lr"] for h in ours[2]["history"]]
    assert lrs == ([1e-3] * 3 if lr_step == 0 else pytest.approx([1e-3, 1e-4, 1e-5]))


def test_sgd_base_recipe_gives_task_0_sgd_and_its_epochs_and_task_1_adam(monkeypatch):
    p = parse_params(compose([*TINY, "+train.base_optimizer=sgd", "+train.base_epochs=2", "+train.base_lr=0.05",
                              "+train.base_momentum=0.8", "+train.base_weight_decay=0.001", "+train.base_milestones=[1]"]))
    built, bars = spy(monkeypatch)
    payload0, _, payload1, _ = two_tasks(p)
    (sgd, multistep), (adam, step) = built
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.8, 0.001)
    assert type(multistep) is torch.optim.lr_scheduler.MultiStepLR and dict(multistep.milestones) == {1: 1}
    assert multistep.gamma == 0.1
    assert len(payload0["history"]) == 2 and [h["lr"] for h in payload0["history"]] == pytest.approx([0.05, 0.005])
    assert type(adam) is torch.optim.Adam and step is None  # train=smoke: constant learning rate
    assert (adam.defaults["lr"], adam.defaults["weight_decay"]) == (1e-3, 2e-4)
    assert [h["lr"] for h in payload1["history"]] == [1e-3] * 3
    assert bars == [2, 3]
    # the optimiser covers every parameter of the network (method-spec 5.1: nothing is frozen)
    assert sum(len(g["params"]) for g in sgd.param_groups) == len(
        [k for k in payload0["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))])


# --- DyTox's released recipe (dytox_optimizer: adamw; docs/dytox.md 5) -------------------------------------------

@pytest.mark.parametrize(("epoch", "expected"), [
    (0, 0.1),                                        # epoch 0: warmup_lr
    (1, 0.55),                                       # mid warm-up: 0.1 + 1 x (1 - 0.1) / 2
    (2, 0.5 * (1 + 0.8090169943749474)),             # end of warm-up: the task's cosine at 2/10 (cos 36 deg), 0.9045
    (5, 0.5),                                        # middle of the cosine: 0 + 0.5 x 1 x (1 + cos 90 deg)
    (9, 0.5 * (1 - 0.9510565162951535)),             # last epoch: cos 162 deg, 0.0245
    (10, 0.0), (12, 0.0),                            # after the task: min_lr
])
def test_warmup_cosine_hand_values(epoch, expected):
    assert optim.warmup_cosine_lr(epoch, lr=1.0, epochs=10, warmup_epochs=2, warmup_lr=0.1, min_lr=0.0) == \
        pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_warmup_cosine_with_the_released_constants():
    """CIFAR-100: lr 2.5e-4 (5e-4 x 256 / 512), 500 epochs, warm-up 5 from 1e-6, cosine to 1e-5."""
    def lr(e):
        return optim.warmup_cosine_lr(e, 2.5e-4, 500, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5)

    assert lr(0) == pytest.approx(1e-6, rel=1e-12)
    assert lr(4) == pytest.approx(1e-6 + 4 * 2.49e-4 / 5, rel=1e-12)  # 2.002e-4: the warm-up never reaches lr
    assert lr(250) == pytest.approx(1e-5 + 1.2e-4, rel=1e-12)  # half way: min_lr + (lr - min_lr) / 2
    assert lr(499) == pytest.approx(1e-5 + 1.2e-4 * (1 - 0.9999802608561371), rel=1e-9)  # cos(499 pi / 500)
    assert lr(500) == 1e-5
    no_warmup = [optim.warmup_cosine_lr(e, 1.0, 4) for e in range(4)]  # 1, (1 + cos 45)/2, 1/2, (1 + cos 135)/2
    assert no_warmup == pytest.approx([1.0, 0.8535533905932737, 0.5, 0.14644660940672624], rel=1e-12)


def test_epoch_schedule_sets_each_epochs_rate_and_resumes_from_its_state():
    w = torch.nn.Parameter(torch.ones(2))
    recipe = optim.Recipe("adamw", 10, 1.0, 0.0, 0.0, (), 0, 1.0, cosine=True, warmup_epochs=2, warmup_lr=0.1)
    optimizer, scheduler = optim.build_optimizer([{"params": [w]}], recipe)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["eps"] == 1e-8
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert seen == pytest.approx([0.1, 0.55, 0.9045084971874737], rel=1e-12)
    again, again_schedule = optim.build_optimizer([{"params": [w]}], recipe)
    assert again.param_groups[0]["lr"] == pytest.approx(0.1)
    again_schedule.load_state_dict(scheduler.state_dict())  # epoch 3, as a resumed task
    assert scheduler.state_dict() == {"epoch": 3}
    assert again.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + 0.5877852522924731), rel=1e-12)  # cos 54 deg


def _dytox_net():
    from ncil.models.dytox import DyToxNet

    p = parse_params(compose(["+experiment=digits_dytox", "model=vit_digits_tiny"]))
    net = DyToxNet(p.model, 1, 4, divergence=True)
    net.expand(2, generator=torch.Generator().manual_seed(0))
    return net


def test_adamw_decays_weight_matrices_only():
    """No decay on biases, LayerNorms, GPSA's gating, the positional embedding and the task tokens; decay on the 16
    weight matrices of the tiny two-task net (patch embedding; qk, v, proj, pos_proj, fc1, fc2 of its SAB; q, k, v,
    proj, fc1, fc2 of the TAB; both classifiers and the divergence head)."""
    from ncil.models.dytox import weight_decayed

    net = _dytox_net()
    named = list(net.named_parameters())
    decayed = {n for n, q in named if weight_decayed(n, q)}
    assert len(decayed) == 16
    assert {"patch_embed.weight", "blocks.0.attn.qk.weight", "tab.attn.q.weight", "heads.1.linear.weight",
            "divergence.linear.weight"} <= decayed
    for kept in ("pos_embed", "task_tokens.0", "task_tokens.1", "blocks.0.norm1.weight", "blocks.0.attn.gating_param",
                 "tab.mlp.fc1.bias", "heads.0.norm.weight", "heads.0.linear.bias"):
        assert kept not in decayed, kept
    groups = optim.decay_groups(named, weight_decayed, 0.5)
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(named) and len(groups[0]["params"]) == 16
    # One AdamW step with zero gradients: Adam's update is 0, so only the decoupled decay moves a parameter, by the
    # factor 1 - lr x weight_decay = 1 - 0.1 x 0.5 = 0.95 on the decayed group, not at all on the other.
    before = {n: q.detach().clone() for n, q in named}
    optimizer, _ = optim.build_optimizer(groups, optim.Recipe("adamw", 1, 0.1, 0.5, 0.0, (), 0, 1.0))
    for _, q in named:
        q.grad = torch.zeros_like(q)
    optimizer.step()
    for n, q in named:
        factor = 0.95 if n in decayed else 1.0
        assert torch.allclose(q.detach(), before[n] * factor, rtol=1e-6, atol=0), n
    (alone,) = optim.decay_groups([("b", torch.zeros(3))], weight_decayed, 0.5)  # an empty group is left out
    assert alone["weight_decay"] == 0.0 and len(alone["params"]) == 1


DYTOX_ADAMW = ["+experiment=digits_dytox", "model=vit_digits_tiny", "train=smoke", "train.epochs=3",
               "train.batch_size=16", "runtime.device=cpu",
               *[f"method.{m}.{k}={v}" for m in ("dytox", "dytox_pks")
                 for k, v in (("exemplars_per_class", 3), ("finetune_epochs", 2), ("dytox_optimizer", "adamw"),
                              ("warmup_epochs", 1), ("warmup_lr", 1e-4), ("min_lr", 1e-5))]]


def test_a_dytox_task_trains_each_epoch_at_the_schedules_rate():
    """Task 1 under adamw: epoch lrs 1e-4 (warm-up), then the cosine of 3 epochs from 1e-3 to 1e-5 at epochs 1, 2;
    the fine-tuning at its constant finetune_lr (1e-4, digits_dytox's)."""
    p = parse_params(compose(DYTOX_ADAMW))
    data, log = split(), logging.getLogger("test")
    job0 = training.TaskJob(0, 1, list(range(10)), TASKS, "dytox", p.method["dytox"], {})
    job1 = training.TaskJob(1, 1, list(range(10)), TASKS, "dytox", p.method["dytox"], {})
    out0 = training.train_task(p, job0, data, None, None, log)
    out1 = training.train_task(p, job1, data, out0[0], out0[1], log, previous_memory=out0[2])
    lrs = [(h["phase"], h["lr"]) for h in out1[0]["history"]]
    cos = [1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + c) for c in (0.5, -0.5)]  # cos 60 deg, cos 120 deg
    assert [phase for phase, _ in lrs] == ["task"] * 3 + ["finetune"] * 2
    assert [lr for _, lr in lrs] == pytest.approx([1e-4, *cos, 1e-4, 1e-4], rel=1e-12)
    assert out1[0]["config"]["method_config"]["dytox_optimizer"] == "adamw"


def test_the_default_dytox_recipe_is_the_train_sections():
    """dytox_optimizer adam (the default, the committed digits_dytox grid's): the recipe every method trains with."""
    p = parse_params(compose(["+experiment=digits_dytox"]))
    method = p.method["dytox"]
    assert (method.dytox_optimizer, method.warmup_epochs, method.warmup_lr, method.min_lr) == ("adam", 0, 0.0, 0.0)
    for task in (0, 1):
        assert optim.dytox_recipe(p.train, method, task) == optim.task_recipe(p.train, task)
    assert optim.dytox_finetune_recipe(p.train, method) == optim.Recipe("adam", 20, 1e-4, 2e-4, 0.0, (), 0, 1.0)
    adamw = parse_params(compose(DYTOX_ADAMW)).method["dytox"]
    assert optim.dytox_recipe(p.train, adamw, 1) == optim.Recipe("adamw", 20, 1e-3, 2e-4, 0.0, (), 0, 1.0, cosine=True,
                                                                 warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5)
    assert optim.dytox_finetune_recipe(p.train, adamw).optimizer == "adamw"


@pytest.mark.parametrize(("overrides", "message"), [
    (["method.dytox.warmup_epochs=5"], "method.dytox.warmup_epochs: only dytox_optimizer adamw's schedule reads it: "
                                       "expected 0, got 5 (or set method.dytox.dytox_optimizer: adamw)"),
    (["method.dytox.dytox_optimizer=sgd"], "method.dytox.dytox_optimizer: expected one of"),
    (["method.dytox.dytox_optimizer=adamw", "method.dytox.warmup_epochs=20"],
     "method.dytox.warmup_epochs: expected fewer than train.epochs (20): the warm-up ends inside the task, got 20"),
    (["method.dytox.dytox_optimizer=adamw", "method.dytox.min_lr=0.01"],
     "method.dytox.min_lr: expected at most train.lr (0.001), got 0.01"),
    (["method.dytox.dytox_optimizer=adamw", "method.dytox.warmup_lr=1e-6"],
     "method.dytox.warmup_lr: warmup_epochs 0 has no warm-up: expected 0.0, got 1e-06"),
    (["method.dytox.dytox_optimizer=adamw", "method.dytox.warmup_epochs=-1"], "method.dytox.warmup_epochs: expected"),
])
def test_bad_dytox_schedules_are_refused_naming_the_field(overrides, message):
    from ncil.pipeline.config import ConfigError

    data = compose(["+experiment=digits_dytox", *overrides])
    with pytest.raises(ConfigError, match="^params.yaml: " + re.escape(message)):
        parse_params(data)


def test_the_dytox_optimizer_is_refused_on_another_backbone():
    from ncil.pipeline.config import ConfigError

    data = compose(["method=[ours]"])
    data["method"]["ours"]["dytox_optimizer"] = "adamw"
    with pytest.raises(ConfigError, match=r"^params.yaml: method.ours.dytox_optimizer: only DyTox's loop uses it"):
        parse_params(data)
