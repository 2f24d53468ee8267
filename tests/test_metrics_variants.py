"""Metric variants of metrics.md (never the default) and properties of the paper's definitions."""

import numpy as np
import pytest

from ncil.reports import metrics

NAN = np.nan
# metrics.md, "Example where they disagree": rows after tasks 1..3.
DISAGREE = np.array([[80, NAN, NAN], [85, 70, NAN], [65, 72, 75]], float)


@pytest.mark.parametrize(
    "func, expected",
    [
        (metrics.average_forgetting, 9.0),  # paper: max over earlier steps
        (metrics.clipped_forgetting, 10.0),  # Mammoth / PILOT: max includes the final step
        (metrics.first_minus_last_forgetting, 6.5),  # Avalanche
        (metrics.backward_transfer, -6.5),  # BWT = -(first-minus-last)
    ],
)
def test_forgetting_conventions_of_the_metrics_md_table(func, expected):
    assert func(DISAGREE) == pytest.approx(expected)


def test_class_weighted_forgetting_of_the_metrics_md_table():
    # (50*20 + 10*(-2))/60 = 16.33
    assert metrics.class_weighted_forgetting(DISAGREE, [50, 10, 10]) == pytest.approx(980 / 60)


def test_task_averaged_versus_sample_weighted_accuracy():
    # metrics.md: 50-class base at 70% on 5000 images, 10-class task at 90% on 1000 images.
    acc = np.array([[70, NAN], [70, 90]], float)
    assert metrics.accuracy_per_step(acc, [5000, 1000])[-1] == pytest.approx(73.3333, abs=1e-4)
    assert metrics.task_averaged_accuracy(acc)[-1] == pytest.approx(80.0)
    v = metrics.variants(acc, [5000, 1000])
    assert v["task_averaged_last_accuracy"] == pytest.approx(80.0)
    # The default summary is not affected by the variants.
    assert metrics.summarize(acc, [5000, 1000])["last_accuracy"] == pytest.approx(73.3333, abs=1e-4)


def test_worked_example_curve_and_forgetting_per_step():
    acc = np.array([[90, NAN, NAN], [70, 80, NAN], [60, 65, 85]], float)
    out = metrics.summarize(acc, [5000, 1000, 1000])
    assert round(out["avg_accuracy"], 2) == 75.32 and round(out["last_accuracy"], 2) == 64.29
    f = metrics.forgetting_per_step(acc)
    assert np.isnan(f[0]) and f[1] == pytest.approx(20.0) and f[2] == pytest.approx(22.5)


def _random_matrix(rng, t):
    acc = np.full((t, t), np.nan)
    for k in range(t):
        acc[k, : k + 1] = rng.uniform(0, 100, k + 1)
    return acc


def test_properties_on_random_matrices():
    rng = np.random.default_rng(0)
    for t in range(2, 8):
        acc = _random_matrix(rng, t)
        counts = rng.integers(1, 500, t)
        out = metrics.summarize(acc, counts)
        steps = np.array(out["accuracy_per_step"])
        # Acc_k is a weighted mean of row k: between its min and max.
        for k in range(t):
            assert acc[k, : k + 1].min() - 1e-9 <= steps[k] <= acc[k, : k + 1].max() + 1e-9
        # The clipped variant never reports less than the paper's and is never negative.
        assert metrics.clipped_forgetting(acc) >= out["avg_forgetting"] - 1e-12
        assert metrics.clipped_forgetting(acc) >= 0
        # Paper forgetting is at least first-minus-last (its max includes the step a[i, i]).
        assert out["avg_forgetting"] >= metrics.first_minus_last_forgetting(acc) - 1e-12
        # Equal test counts make the sample-weighted and task-averaged curves agree.
        np.testing.assert_allclose(metrics.accuracy_per_step(acc, np.full(t, 7)), metrics.task_averaged_accuracy(acc))


def test_constant_accuracy_has_zero_forgetting_and_improvement_is_negative():
    acc = np.tril(np.full((4, 4), 50.0)) + np.triu(np.full((4, 4), np.nan), 1)
    assert metrics.average_forgetting(acc) == 0.0
    better = np.array([[50, NAN], [60, 70]], float)  # task 1 improved by 10 points after task 2
    assert metrics.average_forgetting(better) == -10.0
    assert metrics.clipped_forgetting(better) == 0.0


def test_summarize_names_the_bad_input():
    with pytest.raises(ValueError, match=r"acc_matrix\[1\]\[0\]"):
        metrics.summarize(np.array([[90, NAN], [NAN, 80]]), [10, 10])
    with pytest.raises(ValueError, match="test_counts"):
        metrics.summarize(np.array([[90, NAN], [70, 80]]), [10])
    with pytest.raises(ValueError, match="test_counts"):
        metrics.summarize(np.array([[90, NAN], [70, 80]]), [10, 0])
    single = metrics.summarize(np.array([[90.0]]), [10])
    assert single["last_accuracy"] == 90.0 and np.isnan(single["avg_forgetting"])
