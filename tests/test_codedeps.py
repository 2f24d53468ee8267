"""Per-step code dependencies: the package files a verb's module imports, found by reading sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from ncil.pipeline.codedeps import code_files, step_code_files

FAKE = {
    "ncil/__init__.py": '"""fake"""\n',
    "ncil/__main__.py": "import sys\nfrom ncil import stages\n",
    "ncil/stages/__init__.py": 'STAGES = {"train": "ncil.stages.train", "tables": "ncil.stages.tables"}\n',
    "ncil/stages/train.py": "import torch\nfrom ncil import io, models\nfrom ..data import arrays\n\n"
                            "def run(args):\n    from ncil.optim import step  # lazy, inside a function\n",
    "ncil/stages/tables.py": "from . import common\nfrom ncil.tables import render\n",
    "ncil/stages/common.py": "import json\n",
    "ncil/io.py": "import numpy\n",
    "ncil/optim.py": "from .io import write  # relative, from a module: ncil.io\n",
    "ncil/tables.py": "from ncil.metrics import mean\n",
    "ncil/metrics.py": "",
    "ncil/unused.py": "import ncil.tables\n",
    "ncil/models/__init__.py": "from .vit import ViT\n",
    "ncil/models/vit.py": "import ncil.models.head as head\n",
    "ncil/models/head.py": "",
    "ncil/data/__init__.py": "",
    "ncil/data/arrays.py": "from ncil.paths import data_dir\n",
    "ncil/paths.py": "",
}


@pytest.fixture
def fake(tmp_path) -> Path:
    for name, text in FAKE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_closure_follows_every_import_form(fake):
    assert code_files("ncil.stages.train", fake) == [
        "ncil/__init__.py",
        "ncil/data/__init__.py", "ncil/data/arrays.py",  # `from ..data import arrays`: a submodule
        "ncil/io.py",  # `from ncil import io`
        "ncil/models/__init__.py", "ncil/models/head.py", "ncil/models/vit.py",  # package __init__ and beyond
        "ncil/optim.py",  # imported inside a function
        "ncil/paths.py",
        "ncil/stages/__init__.py", "ncil/stages/train.py",  # the module and its package
    ]


def test_a_table_step_does_not_run_training_code(fake):
    files = code_files("ncil.stages.tables", fake)
    assert files == ["ncil/__init__.py", "ncil/metrics.py", "ncil/stages/__init__.py", "ncil/stages/common.py",
                     "ncil/stages/tables.py", "ncil/tables.py"]
    assert "ncil/tables.py" not in code_files("ncil.stages.train", fake)


def test_step_code_files_adds_the_entry_point(fake):
    stages = {"train": "ncil.stages.train", "tables": "ncil.stages.tables"}
    scanned = step_code_files("tables", stages, fake, entry=("ncil.__main__",))
    assert "ncil/__main__.py" in scanned and "ncil/stages/__init__.py" in scanned
    assert "ncil/io.py" not in scanned  # the STAGES table names modules as strings: not imports
    listed = step_code_files("tables", {"tables": ("ncil.tables",)}, fake, entry_files=("ncil/__main__.py",))
    assert listed == ["ncil/__init__.py", "ncil/__main__.py", "ncil/metrics.py", "ncil/tables.py"]
    with pytest.raises(KeyError, match="nosuch: no stage module"):
        step_code_files("nosuch", stages, fake)


def test_missing_module_names_itself(fake):
    (fake / "ncil/broken.py").write_text("from ncil import nothere\nimport ncil.gone\n")
    # `from ncil import nothere` may be an attribute of ncil/__init__.py: not a file, not followed
    assert code_files("ncil.broken", fake) == ["ncil/__init__.py", "ncil/broken.py"]
    with pytest.raises(FileNotFoundError, match="ncil.gone"):
        code_files("ncil.gone", fake)


def test_the_real_package_steps():
    """On this repository: training does not depend on the table code, and tables not on training."""
    from ncil.pipeline.workflow import code_deps

    train, tables = set(code_deps("train")), set(code_deps("tables"))
    assert {"ncil/learning/training.py", "ncil/models/vit.py", "ncil/methods/pks.py", "ncil/__main__.py"} <= train
    assert "ncil/reports/results_table.py" not in train and "ncil/reports/report.py" not in train
    assert "ncil/reports/results_table.py" in tables and "ncil/learning/training.py" not in tables
    root = Path(__file__).resolve().parent.parent
    assert all((root / f).is_file() for f in train | tables)
