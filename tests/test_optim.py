"""The per-task optimiser recipe (ncil.learning.optim, method-spec 5.1 and 5.6) as ``train_task`` uses it."""

import logging

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
