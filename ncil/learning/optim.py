"""The optimiser and learning-rate schedule of one task (method-spec 5.1 and 5.6), as one function.

Every task uses Adam with coupled L2 weight decay and a StepLR stepped once per epoch, except that
task 0 may use its own recipe: ImageNet-Subset's base task is SGD (lr 0.1, momentum 0.9, weight
decay 5e-4) with MultiStepLR at [80, 120, 150] over 160 epochs. The ``base_*`` keys of ``train``
select it; their zero / negative defaults mean "as the other tasks".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ncil.learning import numerics
from ncil.pipeline.config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """What a task trains with: optimiser name, epochs, learning rate, weight decay and schedule."""

    optimizer: str  # adam | sgd
    epochs: int
    lr: float
    weight_decay: float
    momentum: float  # sgd only
    milestones: tuple[int, ...]  # MultiStepLR epochs (sgd); empty: StepLR(step) or constant
    step: int  # StepLR step size in epochs (0 = constant) when there are no milestones
    gamma: float


def task_recipe(train: TrainConfig, task: int) -> Recipe:
    """The recipe of task ``task``: the ``base_*`` keys for task 0, the common keys otherwise."""
    base_as_others = (train.base_optimizer == "adam" and not train.base_epochs and not train.base_lr
                      and train.base_weight_decay < 0)
    if task > 0 or base_as_others:
        return Recipe("adam", train.epochs, train.lr, train.weight_decay, 0.0, (), train.lr_step, train.lr_gamma)
    return Recipe(
        optimizer=train.base_optimizer,
        epochs=train.base_epochs or train.epochs,
        lr=train.base_lr or train.lr,
        weight_decay=train.weight_decay if train.base_weight_decay < 0 else train.base_weight_decay,
        momentum=train.base_momentum if train.base_optimizer == "sgd" else 0.0,
        milestones=tuple(train.base_milestones),
        step=0 if train.base_milestones else train.lr_step,
        gamma=train.lr_gamma,
    )


def build_optimizer(parameters, recipe: Recipe):
    """(optimizer, scheduler or None) for ``recipe``; the scheduler is stepped once per epoch."""
    parameters = list(parameters)
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay)
    else:
        # runtime.numerics=portable: fused=True, an IEEE sqrt in the update (ncil/learning/numerics.py); native: no extra
        # argument. On CUDA always fused: one kernel per parameter group instead of ~200 small ones per step.
        on_cuda = bool(parameters) and parameters[0].is_cuda
        optimizer = torch.optim.Adam(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                     **{**numerics.adam_options(), **({"fused": True} if on_cuda else {})})
    if recipe.milestones:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(recipe.milestones),
                                                         gamma=recipe.gamma)
    elif recipe.step:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.step, gamma=recipe.gamma)
    else:
        scheduler = None
    return optimizer, scheduler
