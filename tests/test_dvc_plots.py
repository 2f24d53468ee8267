"""`dvc plots show` renders Figure 3's accuracy curves from the committed figure data."""

import json
import shutil

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_dvc import dvc


@pytest.mark.slow
def test_dvc_plots_show_renders_the_accuracy_curves(tmp_path):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "results" / "figures", tmp_path / "results" / "figures")
    dvc(tmp_path, "init", "--no-scm", "-q")
    plots = {name: spec for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] for name, spec in p.items()}
    assert plots and all(name.startswith("fig3_") for name in plots)
    shown = json.loads(dvc(tmp_path, "plots", "show", "--json").stdout)["data"]
    assert sorted(shown) == sorted(plots)
    for name, spec in plots.items():
        (methods,) = spec["y"].values()
        values = shown[name][0]["content"]["data"]["values"]
        assert {v["field"] for v in values} == set(methods)  # one curve per method of the grid
        assert all(0 <= float(v["dvc_inferred_y_value"]) <= 100 for v in values if v["dvc_inferred_y_value"] != "")
