"""The optimiser and learning-rate schedule of one task (method-spec 5.1 and 5.6), as one function.

Every task uses Adam with coupled L2 weight decay and a StepLR stepped once per epoch, except that
task 0 may use its own recipe: ImageNet-Subset's base task is SGD (lr 0.1, momentum 0.9, weight
decay 5e-4) with MultiStepLR at [80, 120, 150] over 160 epochs. The ``base_*`` keys of ``train``
select it; their zero / negative defaults mean "as the other tasks".

DyTox (docs/dytox.md 5) may instead use its released recipe (``dytox_optimizer: adamw``): AdamW with decoupled
weight decay on two parameter groups (``decay_groups``) and, per task, a linear warm-up then a cosine
(``warmup_cosine_lr``, what timm's CosineLRScheduler with warm-up gives per epoch), set by ``EpochSchedule``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ncil.learning import numerics
from ncil.pipeline.config import MethodConfig, TrainConfig


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
    # adamw (DyTox's released recipe): a linear warm-up then a cosine per epoch (warmup_cosine_lr) when ``cosine``
    cosine: bool = False
    warmup_epochs: int = 0
    warmup_lr: float = 0.0
    min_lr: float = 0.0


def warmup_cosine_lr(epoch: int, lr: float, epochs: int, warmup_epochs: int = 0, warmup_lr: float = 0.0,
                     min_lr: float = 0.0) -> float:
    """The learning rate of epoch ``epoch`` (0-based) of a task of ``epochs`` epochs (pure).

    During the warm-up (epoch < warmup_epochs) it rises linearly from ``warmup_lr`` by (lr - warmup_lr) /
    warmup_epochs per epoch, never reaching ``lr``; from there it follows the cosine of the whole task,
    min_lr + (lr - min_lr) (1 + cos(pi epoch / epochs)) / 2, which the warm-up replaced at its start; from
    ``epochs`` on it is ``min_lr``. This is timm's CosineLRScheduler(t_initial=epochs, lr_min=min_lr,
    warmup_t=warmup_epochs, warmup_lr_init=warmup_lr) stepped per epoch, one cycle, the warm-up not a prefix
    (DyTox's main.py: timm's ``cosine`` with ``warmup_epochs`` 5, ``warmup_lr`` 1e-6, ``min_lr`` 1e-5).
    """
    if epoch < warmup_epochs:
        return warmup_lr + epoch * (lr - warmup_lr) / warmup_epochs
    if epoch >= epochs:
        return min_lr
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * epoch / epochs))


class EpochSchedule:
    """Sets every parameter group's learning rate to ``lr_at(epoch)`` at the start of each epoch: at
    construction (epoch 0) and at every ``step``, once per epoch. Its state (for ``ncil.learning.resume``)
    is the epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float]):
        self.optimizer, self.lr_at, self.epoch = optimizer, lr_at, 0
        self._apply()

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.epoch)

    def step(self) -> None:
        self.epoch += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._apply()


def decay_groups(named_parameters, decays: Callable[[str, torch.Tensor], bool], weight_decay: float) -> list[dict]:
    """AdamW's two parameter groups (pure): ``decays(name, parameter)`` true ones with ``weight_decay``, the
    others with none, each in the order given; an empty group is left out."""
    named = list(named_parameters)
    decayed = [q for n, q in named if decays(n, q)]
    kept = [q for n, q in named if not decays(n, q)]
    return [g for g in ({"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0})
            if g["params"]]


def dytox_recipe(train: TrainConfig, method: MethodConfig, task: int) -> Recipe:
    """The recipe of task ``task`` of a DyTox method: the train section's (``task_recipe``) under
    ``dytox_optimizer`` adam; under adamw its epochs, learning rate and weight decay with AdamW and the warm-up
    cosine schedule (the configuration refuses adamw over an SGD base recipe)."""
    recipe = task_recipe(train, task)
    if method.dytox_optimizer != "adamw":
        return recipe
    return Recipe("adamw", recipe.epochs, recipe.lr, recipe.weight_decay, 0.0, (), 0, 1.0, cosine=True,
                  warmup_epochs=method.warmup_epochs, warmup_lr=method.warmup_lr, min_lr=method.min_lr)


def dytox_finetune_recipe(train: TrainConfig, method: MethodConfig) -> Recipe:
    """DyTox's balanced fine-tuning: ``finetune_epochs`` at the constant ``finetune_lr``, with the task's
    optimiser (Adam, or AdamW under dytox_optimizer adamw, as the released code's create_optimizer) and the
    train section's weight decay."""
    optimizer = "adamw" if method.dytox_optimizer == "adamw" else "adam"
    return Recipe(optimizer, method.finetune_epochs, method.finetune_lr, train.weight_decay, 0.0, (), 0, 1.0)


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
    """(optimizer, scheduler or None) for ``recipe``; the scheduler is stepped once per epoch. ``parameters``:
    tensors, or for adamw the parameter groups of ``decay_groups``."""
    parameters = list(parameters)
    if recipe.optimizer == "adamw":
        first = parameters[0]["params"][0] if parameters and parameters[0]["params"] else None
        on_cuda = first is not None and first.is_cuda
        optimizer = torch.optim.AdamW(parameters, lr=recipe.lr, eps=1e-8, weight_decay=recipe.weight_decay,
                                      **{**numerics.adam_options(), **({"fused": True} if on_cuda else {})})
    elif recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay)
    else:
        # runtime.numerics=portable: fused=True, an IEEE sqrt in the update (ncil/learning/numerics.py); native: no extra
        # argument. On CUDA always fused: one kernel per parameter group instead of ~200 small ones per step.
        on_cuda = bool(parameters) and parameters[0].is_cuda
        optimizer = torch.optim.Adam(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                     **{**numerics.adam_options(), **({"fused": True} if on_cuda else {})})
    if recipe.cosine:
        scheduler = EpochSchedule(optimizer, lambda epoch: warmup_cosine_lr(
            epoch, recipe.lr, recipe.epochs, recipe.warmup_epochs, recipe.warmup_lr, recipe.min_lr))
    elif recipe.milestones:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(recipe.milestones),
                                                         gamma=recipe.gamma)
    elif recipe.step:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.step, gamma=recipe.gamma)
    else:
        scheduler = None
    return optimizer, scheduler
