"""The paper preset's settings read from ``conf/`` as plain YAML, without Hydra (for ``scripts/gpu_check.py``).

Hydra composes ``conf/`` for the workflow (``ncil.pipeline.hydra_conf``). A machine that has only torch, numpy,
pyyaml and this package (a lent GPU machine, say) still needs the paper's model, data set, schedule and
method settings: this module reads the group files those settings live in, one file per group option,
and the ``override /group: option`` lines of the experiment files that pick them. It reads nothing
else of Hydra's grammar (no interpolation, no packages, no defaults lists inside group files but the
official preset's methods' ``[/preset/method/official@<name>, _self_]``: it refuses any other), and ``tests/test_gpu_check.py`` checks that
what it reads equals Hydra's composition of the same experiment.
"""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# The experiment file of each data set's paper grid (conf/experiment/<name>.yaml).
PAPER_EXPERIMENTS = ("cifar100", "tinyimagenet", "imagenet_subset")


def read_yaml(path: Path):
    from ncil.pipeline import io

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file (expected a {path.parent.name} option of conf/)") from None
    return io.parse_yaml(text, path)  # a key given twice is refused, as everywhere


def group_option(group: str, option: str, conf_dir: Path = CONF_DIR) -> dict:
    """The mapping of ``conf/<group>/<option>.yaml``; for ``method`` and ``scenario``, its named entry."""
    path = Path(conf_dir) / group / f"{option}.yaml"
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(data).__name__}")
    if "defaults" in data:
        data = _preset_method(path, data, option, conf_dir) if group == "method" else None
        if data is None:
            raise ValueError(f"{path}: composes other files (a defaults list), which only Hydra reads "
                             f"(ncil.pipeline.hydra_conf.compose); expected a group file without one")
    if group in ("method", "scenario"):
        if option not in data:
            raise ValueError(f"{path}: expected one entry named {option!r}, got {sorted(data)}")
        return data[option]
    return data


def _preset_method(path: Path, data: dict, option: str, conf_dir: Path) -> dict | None:
    """A method file whose defaults list is ``[/preset/method/<preset>@<option>, _self_]`` (the official
    preset's methods): the preset's options with the file's own on top, as Hydra merges them; None for
    any other defaults list."""
    defaults = data["defaults"]
    if not (isinstance(defaults, list) and len(defaults) == 2 and defaults[1] == "_self_"
            and isinstance(defaults[0], str) and defaults[0].startswith("/preset/method/")
            and defaults[0].endswith(f"@{option}")):
        return None
    preset = defaults[0][len("/preset/method/"):-len(f"@{option}")]
    base = read_yaml(Path(conf_dir) / "preset" / "method" / f"{preset}.yaml")
    return {option: {**base, **(data.get(option) or {})}}


def experiment_choices(name: str, conf_dir: Path = CONF_DIR) -> dict[str, str | list[str]]:
    """Group -> option(s) that ``conf/experiment/<name>.yaml`` overrides (``override /dataset: cifar100``)."""
    path = Path(conf_dir) / "experiment" / f"{name}.yaml"
    data = read_yaml(path)
    defaults = data.get("defaults") if isinstance(data, dict) else None
    if not isinstance(defaults, list):
        raise ValueError(f"{path}: defaults: expected a list of 'override /group: option' entries")
    choices: dict[str, str | list[str]] = {}
    for entry in defaults:
        if not (isinstance(entry, dict) and len(entry) == 1):
            raise ValueError(f"{path}: defaults: expected one 'override /group: option' per entry, got {entry!r}")
        (key, value), = entry.items()
        if not key.startswith("override /"):
            raise ValueError(f"{path}: defaults: expected 'override /group', got {key!r}")
        choices[key.removeprefix("override /")] = value
    return choices


def method_default(key: str):
    """The default of a MethodConfig field (what a method file that leaves ``key`` out gets)."""
    import dataclasses

    from ncil.pipeline.config import MethodConfig

    return next(f.default for f in dataclasses.fields(MethodConfig) if f.name == key)


def experiment_overrides(name: str, conf_dir: Path = CONF_DIR) -> dict[str, dict]:
    """Section -> keys that ``conf/experiment/<name>.yaml`` sets itself, after its defaults (the paper
    grids' ``dataset: {val_fraction: 0.0}``): ``compose_params``'s ``overrides``. The grid's ``preset``
    is not one: a one-method grid's preset is its method's own (``compose_params``)."""
    path = Path(conf_dir) / "experiment" / f"{name}.yaml"
    data = read_yaml(path)
    out = {}
    for key, value in (data.items() if isinstance(data, dict) else []):
        if key in ("defaults", "preset"):
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{path}: {key}: expected a mapping of keys replaced in that section, got {value!r}")
        out[key] = dict(value)
    return out


def compose_params(dataset: str, model: str, train: str, method: str = "ours", scenarios: list[str] | None = None,
                   runtime: dict | None = None, conf_dir: Path = CONF_DIR, overrides: dict | None = None) -> dict:
    """A params mapping (as ``python -m ncil params`` writes it) from named group options.

    ``overrides`` maps a section name (dataset, model, train, runtime) to keys replaced in it. The
    top-level keys order_seed and seeds are those of ``conf/config.yaml``; ``preset`` is the method's own
    (the grid preset of a one-method grid, as ``ncil.pipeline.config`` validates it); ``scenarios`` default
    to CIFAR-100's 50+10x5 (parse_params needs one; a synthetic task does not use it).
    """
    top = read_yaml(Path(conf_dir) / "config.yaml")
    overrides = overrides or {}
    sections = {"dataset": group_option("dataset", dataset, conf_dir), "model": group_option("model", model, conf_dir),
                "train": group_option("train", train, conf_dir),
                "runtime": {**group_option("runtime", "cpu", conf_dir), **(runtime or {})}}
    for name, values in overrides.items():
        sections[name] = {**sections[name], **values}
    scenarios = scenarios or ["base50_inc10"]
    spec = group_option("method", method, conf_dir)
    return {
        "preset": spec.get("preset", method_default("preset")), "order_seed": top["order_seed"], "seeds": list(top["seeds"]),
        **sections,
        "scenario": {s: group_option("scenario", s, conf_dir) for s in scenarios},
        "method": {method: spec},
    }


def paper_experiment(name: str, conf_dir: Path = CONF_DIR) -> dict:
    """The paper grid of one data set: its dataset, model and train options, its scenarios and the keys it
    sets itself (``overrides``: ``experiment_overrides``)."""
    choices = experiment_choices(name, conf_dir)
    missing = [g for g in ("dataset", "model", "train", "scenario") if g not in choices]
    if missing:
        raise ValueError(f"{Path(conf_dir) / 'experiment' / f'{name}.yaml'}: defaults: no override of {', '.join(missing)}")
    scenarios = choices["scenario"] if isinstance(choices["scenario"], list) else [choices["scenario"]]
    return {"dataset": choices["dataset"], "model": choices["model"], "train": choices["train"],
            "scenarios": list(scenarios), "overrides": experiment_overrides(name, conf_dir)}
