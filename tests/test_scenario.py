import pytest

from ncil.data.scenario import class_order, remap_labels, task_classes, task_sizes

# method-spec 1.2: CIFAR-100 under seed 1993 (legacy RandomState), as PyCIL publishes it.
CIFAR100_1993 = [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92, 55, 9, 26, 80, 43, 38, 58, 70, 77, 1, 85, 19,
                 17, 50, 28, 53, 13, 81, 45, 82, 6, 59, 83, 16, 15, 44, 91, 41, 72, 60, 79, 52, 20, 10, 31, 54, 37, 95,
                 14, 71, 96, 98, 97, 2, 64, 66, 42, 22, 35, 86, 24, 34, 87, 21, 99, 0, 88, 27, 18, 94, 11, 12, 47, 25,
                 30, 46, 62, 69, 36, 61, 7, 63, 75, 5, 32, 4, 51, 48, 73, 93, 39, 67, 29, 49, 57, 33]


def test_cifar100_class_order_seed_1993():
    assert class_order(100, 1993) == CIFAR100_1993


def test_tinyimagenet_order_prefix():
    assert class_order(200, 1993)[:20] == [168, 136, 51, 9, 183, 101, 171, 99, 42, 159, 191, 70, 16, 188, 27, 10,
                                           175, 26, 68, 187]


def test_task_sizes_paper_settings():
    assert task_sizes(100, 50, 10) == [50] + [10] * 5
    assert task_sizes(100, 50, 5) == [50] + [5] * 10
    assert task_sizes(100, 40, 3) == [40] + [3] * 20
    assert task_sizes(200, 100, 5) == [100] + [5] * 20
    assert task_sizes(10, 4, 2) == [4, 2, 2, 2]
    assert task_sizes(10, 5, 1) == [5, 1, 1, 1, 1, 1]
    assert task_sizes(10, 4, 6) == [4, 6]


def test_task_classes_follow_the_order():
    order = class_order(10, 1993)
    tasks = task_classes(order, 4, 2)
    assert [c for t in tasks for c in t] == order
    assert tasks[0] == order[:4] and tasks[1] == order[4:6]
    remap = remap_labels(order)
    assert [remap[c] for c in tasks[1]] == [4, 5]


@pytest.mark.parametrize("args, message", [
    ((10, 11, 1), "initial_increment: expected 1..9 (fewer than the 10 classes"),
    ((10, 10, 1), "initial_increment: expected 1..9"),  # no incremental task would follow
    ((10, 0, 2), "initial_increment: expected 1..9"),
    ((10, 4, 0), "increment: expected a positive integer, got 0"),
    # PyCIL would give [4, 4, 2], which "4+4x2" would misname
    ((10, 4, 4), "increment: expected a divisor of the 6 classes after the base task (1, 2, 3, 6), got 4: "
                 "its tasks would have [4, 4, 2] classes"),
    ((100, 50, 15), "increment: expected a divisor of the 50 classes after the base task (1, 2, 5, 10, 25, 50)"),
])
def test_task_sizes_rejects_bad_values(args, message):
    with pytest.raises(ValueError) as err:
        task_sizes(*args)
    assert str(err.value).startswith(message), str(err.value)
    with pytest.raises(ValueError):
        task_classes(list(range(args[0])), *args[1:])


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_class_order_rejects_a_seed_numpy_cannot_take(seed):
    with pytest.raises(ValueError, match=r"^order_seed: expected an integer in 0..4294967295"):
        class_order(10, seed)
