"""Compose ``conf/`` with Hydra's compose API into ``params.yaml`` (never ``@hydra.main``)."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
HEADER = "# Generated from conf/ by `python -m ncil params` (or `dvc exp run -S ...`); edit conf/ or override.\n"


def compose(overrides: list[str] | None = None, conf_dir: str | Path = CONF_DIR) -> dict:
    """The composed configuration as plain Python values; Hydra names a bad key or value."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    return OmegaConf.to_container(cfg, resolve=True)


def write_params(overrides: list[str], params_path: str = "params.yaml", dvc_path: str | None = "dvc.yaml") -> dict:
    """Compose, validate, write params.yaml and (optionally) the dvc.yaml generated from it."""
    from ncil import io
    from ncil.config import parse_params
    from ncil.dvcgen import render_dvc_yaml

    data = compose(overrides)
    parse_params(data, source=f"conf/ with overrides {list(overrides)}")
    io.write_yaml(params_path, data, header=HEADER)
    if dvc_path:
        io.write_text(dvc_path, render_dvc_yaml(data, params_path))
    return data


def render_grid(name: str, overrides: list[str] | None = None) -> tuple[dict, str, str]:
    """A paper data set's grid: (params, params.yaml text, dvc.yaml text) of ``+experiment=<name>``.

    Its dvc.yaml lives in ``grids/<name>/`` and runs from the repository root (``wdir: ../..``), so
    ``dvc repro`` at the root keeps reproducing the default grid only, and
    ``dvc repro grids/<name>/dvc.yaml`` reproduces this one. Only params.yaml is committed before a
    grid is used: DVC collects every dvc.yaml of the repository for untargeted commands (``dvc commit``,
    ``dvc status``, ``dvc metrics show``), which would otherwise list ~100 outputs nobody has made.
    """
    import yaml

    from ncil import paths
    from ncil.config import parse_params
    from ncil.dvcgen import render_dvc_yaml

    overrides = [f"+experiment={name}", *(overrides or [])]
    data = compose(overrides)
    params_file = paths.grid_params(name)
    parse_params(data, source=f"conf/ with overrides {overrides}")
    if data["dataset"]["name"] != name:
        from ncil.config import ConfigError

        raise ConfigError(f"conf/experiment/{name}.yaml: dataset.name: expected {name!r}, got {data['dataset']['name']!r}")
    header = HEADER.replace("`python -m ncil params`", f"`python -m ncil grid {name}`")
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    dvc_text = render_dvc_yaml(data, params_file, wdir="../..").replace(
        "`python -m ncil dvc-yaml` from params.yaml", f"`python -m ncil grid {name}` from {params_file}")
    return data, text, dvc_text


def write_grid(name: str, overrides: list[str] | None = None) -> dict:
    from ncil import io, paths

    data, params_text, dvc_text = render_grid(name, overrides)
    io.write_text(paths.grid_params(name), params_text)
    io.write_text(paths.grid_dvc_yaml(name), dvc_text)
    return data
