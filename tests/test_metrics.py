import numpy as np
import pytest

from ncil.reports import metrics

NAN = np.nan


def test_worked_example_of_the_paper_definitions():
    # metrics.md / method-spec 6.3: 5000 / 1000 / 1000 test images.
    acc = np.array([[90, NAN, NAN], [70, 80, NAN], [60, 65, 85]], float)
    out = metrics.summarize(acc, [5000, 1000, 1000])
    assert out["accuracy_per_step"] == pytest.approx([90.0, 71.6667, 64.2857], abs=1e-4)
    assert out["avg_accuracy"] == pytest.approx(75.3175, abs=1e-4)
    assert out["last_accuracy"] == pytest.approx(64.2857, abs=1e-4)
    assert out["avg_forgetting"] == pytest.approx(22.5)


def test_forgetting_max_over_earlier_steps_only_can_be_negative():
    # metrics.md variants example: the paper convention gives 9.0 (not clipped 10.0 nor BWT 6.5).
    acc = np.array([[80, NAN, NAN], [85, 70, NAN], [65, 72, 75]], float)
    assert metrics.forgetting(acc).tolist() == [20.0, -2.0]
    assert metrics.average_forgetting(acc) == pytest.approx(9.0)


def test_no_forgetting_is_zero():
    acc = np.array([[90, NAN, NAN], [90, 80, NAN], [90, 80, 70]], float)
    assert metrics.average_forgetting(acc) == 0.0


def test_accuracy_matrix_from_predictions():
    ev0 = {"label": [0, 0, 1, 1], "label_task": [0, 0, 0, 0], "prediction": [0, 0, 1, 0]}
    ev1 = {"label": [0, 0, 1, 1, 2, 2], "label_task": [0, 0, 0, 0, 1, 1], "prediction": [0, 2, 2, 2, 2, 2]}
    acc, counts = metrics.accuracy_matrix([ev0, ev1])
    assert acc[0, 0] == 75.0 and np.isnan(acc[0, 1])
    assert acc[1].tolist() == [25.0, 100.0]
    assert counts.tolist() == [4, 2]
    assert metrics.summarize(acc, counts)["last_accuracy"] == pytest.approx(50.0)
