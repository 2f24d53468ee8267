"""DeiT's repeated-augmentation sampler in DyTox's loop (`repeated_aug`, released --repeated-aug; issue 24 item 1,
docs/dytox.md section 5): the epoch's size and order by hand, what the loop draws, the fine-tuning that the
released sampler leaves empty, the refusal of a training set it would leave empty, and resume."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from ncil.data import arrays
from ncil.learning import dytox_training, training
from ncil.pipeline.config import ConfigError, parse_params
from ncil.pipeline.hydra_conf import compose
from test_resume import DYTOX_TINY, _interrupted_at_every_boundary, _same_dytox_outputs

TASKS = [[0, 1, 2, 3], [4, 5]]
RA = [*DYTOX_TINY, "train.batch_size=64", "method.dytox.repeated_aug=true", "method.dytox_pks.repeated_aug=true"]


@pytest.mark.parametrize(("n", "batch", "rows", "steps"), [
    (600, 256, 512, 2),  # floor(600 / 256) * 256 = 512 rows: two batches of 256
    (600, 100, 500, 5),  # 512 rows, batch 100: 5 full batches, the last 12 dropped (drop_last: 512 > 100)
    (256, 300, 256, 1),  # one batch smaller than batch_size is kept (drop_last: 256 > 300 is false)
    (255, 16, 0, 0),  # under 256 rows: the released sampler yields nothing
    (272, 64, 256, 4),
])
def test_the_epoch_size_by_hand(n, batch, rows, steps):
    assert arrays.repeated_augmentation_size(n, batch) == (rows, steps)
    order = arrays.repeated_augmentation_batches(n, batch, torch.Generator().manual_seed(0))
    assert [len(b) for b in order] == [batch] * (rows // batch) + ([rows % batch] if rows % batch else [])


def test_each_drawn_image_comes_three_times_in_a_row_in_the_generators_permutation():
    order = torch.cat(arrays.repeated_augmentation_batches(600, 256, torch.Generator().manual_seed(7)))
    perm = torch.randperm(600, generator=torch.Generator().manual_seed(7))
    assert len(order) == 512 and torch.equal(order, perm.repeat_interleave(3)[:512])
    triples = order[:510].view(-1, 3)  # 170 images three times, then the 171st twice
    assert torch.equal(triples, triples[:, :1].expand(-1, 3)) and len(set(triples[:, 0].tolist())) == 170
    assert order[510] == order[511] == perm[170]


def _split(per_class: list[int]) -> arrays.Split:
    rng = np.random.RandomState(0)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    return arrays.Split(rng.randint(0, 256, (len(labels), 8, 8, 1)).astype(np.uint8), labels)


def _recording(monkeypatch) -> list[tuple[int, bool, list[int]]]:
    """Record (n, repeated, batch lengths) of every epoch order DyTox's loop draws."""
    drawn, real = [], dytox_training.epoch_order

    def record(n, batch_size, generator, device, repeated=False):
        order = real(n, batch_size, generator, device, repeated=repeated)
        drawn.append((n, repeated, [len(b) for b in order]))
        return order

    monkeypatch.setattr(dytox_training, "epoch_order", record)
    return drawn


def test_dytox_trains_on_the_sampled_rows_and_skips_a_fine_tuning_it_leaves_empty(monkeypatch, caplog):
    """Task 0: 4 x 80 = 320 images -> 256 rows, 4 steps of 64 per epoch (without the sampler: 5 steps, 320 rows).
    Task 1: 2 x 130 new + 12 exemplars = 272 -> 256 rows; its fine-tuning set (3 exemplars x 6 classes = 18) keeps
    none, so it trains no step, as the released sampler, and the history has the training phase only."""
    data = _split([80, 80, 80, 80, 130, 130])
    p = parse_params(compose(RA))
    m = p.method["dytox"]
    drawn = _recording(monkeypatch)
    log = logging.getLogger("test_repeated_aug")
    t0 = training.train_task(p, training.TaskJob(0, 1, list(range(10)), TASKS, "dytox", m, {}), data, None, None, log)
    assert drawn == [(320, True, [64] * 4)] * 2  # train=smoke with train.epochs=2
    drawn.clear()
    with caplog.at_level(logging.WARNING, logger="test_repeated_aug"):
        t1 = training.train_task(p, training.TaskJob(1, 1, list(range(10)), TASKS, "dytox", m, {}), data, *t0[:2], log,
                                 previous_memory=t0[2])
    assert drawn == [(272, True, [64] * 4)] * 2
    assert [h["phase"] for h in t1[0]["history"]] == ["task", "task"]
    assert "finetune skipped: repeated_aug keeps floor(18 / 256) * 256 = 0 rows" in caplog.text
    assert len(t1[2]["index"]) == 18  # herding still chose the memory

    off = parse_params(compose(DYTOX_TINY + ["train.batch_size=64"])).method["dytox"]
    drawn.clear()
    training.train_task(p, training.TaskJob(0, 1, list(range(10)), TASKS, "dytox", off, {}), data, None, None, log)
    assert drawn == [(320, False, [64] * 5)] * 2


def test_a_training_set_the_sampler_would_leave_empty_is_refused_before_training(monkeypatch):
    data = _split([60, 60, 60, 60, 10, 10])  # task 0: 240 images < 256
    p = parse_params(compose(RA))
    drawn = _recording(monkeypatch)
    with pytest.raises(ValueError, match=r"^method\.dytox\.repeated_aug: .* task 0 trains on n = 240, which keeps "
                                         r"none \(expected at least 256 images"):
        training.train_task(p, training.TaskJob(0, 1, list(range(10)), TASKS, "dytox", p.method["dytox"], {}), data,
                            None, None, logging.getLogger("test"))
    assert drawn == []


def test_repeated_aug_is_refused_outside_dytox_and_shapes_the_shared_task_0():
    data = compose(["+experiment=digits_dytox", "method=[ours,dytox,dytox_pks]", "preset=paper"])
    data["method"]["ours"]["repeated_aug"] = True
    with pytest.raises(ConfigError, match=r"method\.ours\.repeated_aug: only DyTox's loop uses it"):
        parse_params(data)
    data = compose(["+experiment=digits_dytox", "method.dytox.repeated_aug=true"])
    with pytest.raises(ConfigError, match=r"repeated_aug"):  # dytox and dytox_pks share task 0
        parse_params(data)
    assert parse_params(compose(["+experiment=cifar100_dytox"])).method["dytox_pks"].repeated_aug


@pytest.mark.slow
def test_a_sampled_task_stopped_at_every_step_boundary_ends_in_the_uninterrupted_bytes(tmp_path):
    data = _split([80, 80, 80, 80, 130, 130])
    p = parse_params(compose(RA))
    job0 = training.TaskJob(0, 1, list(range(10)), TASKS, "dytox", p.method["dytox"], {})
    clean0 = training.train_task(p, job0, data, None, None, logging.getLogger("test"))
    resumed0, positions = _interrupted_at_every_boundary(p, job0, data, None, None, tmp_path / "t0.pt")
    assert positions == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0)]  # 4 steps per epoch
    assert _same_dytox_outputs(resumed0, clean0)
