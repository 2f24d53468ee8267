"""Compose ``conf/`` with Hydra's compose API into ``params.yaml`` (never ``@hydra.main``)."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
HEADER = "# Generated from conf/ by `python -m ncil params` (or `dvc exp run -S ...`); edit conf/ or override.\n"


def compose(overrides: list[str] | None = None, conf_dir: str | Path = CONF_DIR) -> dict:
    """The composed configuration as plain Python values.

    A bad override (unknown key or group option, unparsable text) raises ``ConfigError`` with one
    line naming the override, what is wrong and the closest existing names.
    """
    import yaml
    from hydra.errors import HydraException

    from ncil.pipeline.config import ConfigError

    overrides = list(overrides or [])
    try:
        return _compose(overrides, conf_dir)
    except HydraException as err:
        raise ConfigError(override_error(err, overrides, conf_dir)) from None
    except yaml.YAMLError as err:  # a conf/ file Hydra's loader refuses (a key given twice, bad syntax)
        mark = getattr(err, "problem_mark", None)
        if mark is not None and Path(mark.name).is_file():
            from ncil.pipeline import io

            io.parse_yaml(Path(mark.name).read_text(encoding="utf-8"), mark.name)  # its one-line error
        raise ConfigError(f"{mark.name if mark else conf_dir}: not valid YAML ({' '.join(str(err).split())})") from None


def _compose(overrides: list[str], conf_dir: str | Path) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def _override_key(override: str) -> str:
    """``+train.lr=1`` -> ``train.lr``; ``~dataset.root`` -> ``dataset.root``."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _typed_keys() -> set[str]:
    """Dotted keys of the fixed sections of the typed config (``dataset.root``, ``train.lr``, ...)."""
    import dataclasses

    from ncil.pipeline.config import SECTIONS

    return {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def _did_you_mean(name: str, candidates, prefix: str = "") -> str:
    """`` (did you mean X?)`` for the closest of ``candidates`` (shown under ``prefix.``), else ``""``."""
    import difflib

    close = difflib.get_close_matches(name, sorted(candidates), n=2, cutoff=0.75)
    close = [f"{prefix}.{c}" if prefix else c for c in close]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def override_error(err: Exception, overrides: list[str], conf_dir: str | Path = CONF_DIR) -> str:
    """One line for a Hydra composition error: the override, what is wrong, what exists instead."""
    import re

    from hydra.errors import MissingConfigException, OverrideParseException

    lines = str(err).splitlines() or [type(err).__name__]
    if isinstance(err, OverrideParseException):
        quoted = re.match(r"Error parsing override '(.*)'$", lines[0])
        override = quoted.group(1) if quoted else next((o for o in overrides if o in str(err)), " ".join(overrides))
        reason = lines[1] if quoted and len(lines) > 1 else lines[0]
        return f"override {override!r}: expected key=value in Hydra's override grammar ({reason})"
    missing_option = re.match(r"In '[^']*': Could not (?:find|load) '(.+)/([^'/]+)'", lines[0])
    if isinstance(err, MissingConfigException) and missing_option:  # a config group option without a file
        group, option = missing_option.groups()
        override = next((o for o in overrides if _override_key(o) == group.replace("/", ".")), f"{group}={option}")
        options = sorted(f.stem for f in (Path(conf_dir) / group).glob("*.yaml"))
        hint = _did_you_mean(option, options) or f" (options: {', '.join(options)})"
        return f"override {override!r}: no option {option!r} in conf/{group}/{hint}"
    unknown_key = re.match(r"Could not override '([^']+)'", lines[0])
    if unknown_key:  # a key that is not in the composed tree
        key = unknown_key.group(1)
        override = next((o for o in overrides if _override_key(o) == key), key)
        # The tree as composed up to this override (Hydra applies value overrides in order): its first
        # missing part, and the keys beside it. The suggestion is a courtesy: without it, the key stands.
        before = overrides[: overrides.index(override)] if override in overrides else []
        try:
            node = _compose(before, conf_dir)
        except Exception:  # noqa: BLE001
            return f"override {override!r}: no key {key} in conf/"
        parts, prefix = key.split("."), []
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                break
            node, prefix = node[part], [*prefix, part]
        leaf = parts[len(prefix)] if len(prefix) < len(parts) else parts[-1]
        missing = ".".join([*prefix, leaf])
        if missing in _typed_keys():
            return (f"override {override!r}: {missing} is not set in this composition of conf/; "
                    f"add it with +{override.lstrip('+')}")
        beside = list(node) if isinstance(node, dict) else []
        close = _did_you_mean(leaf, beside, prefix=".".join(prefix))
        if not close and beside:
            close = f" (keys {'of ' + '.'.join(prefix) if prefix else 'at the top level'}: {', '.join(beside)})"
        return f"override {override!r}: no key {missing} in conf/{close}"
    return f"overrides {overrides}: {lines[0]}"


def write_params(overrides: list[str], params_path: str = "params.yaml", dvc_path: str | None = "dvc.yaml") -> dict:
    """Compose, validate, write params.yaml and (optionally) the dvc.yaml generated from it."""
    import shlex

    from ncil.pipeline import io
    from ncil.pipeline.config import parse_params
    from ncil.pipeline.dvcgen import COMPOSED_BY, keep_source, render_dvc_yaml

    data = compose(overrides)
    parse_params(data, source=f"conf/ with overrides {list(overrides)}")
    # The overrides, so that a refused `dvc exp run` can name the command that recomposes this grid.
    io.write_yaml(params_path, data, header=HEADER + (f"{COMPOSED_BY}{shlex.join(overrides)}\n" if overrides else ""))
    if dvc_path:
        from ncil.pipeline import fingerprints
        from ncil.pipeline.workflow import REPO_ROOT

        fingerprints.write(REPO_ROOT)  # the code fingerprints dvc.yaml's stages read
        io.write_text(dvc_path, render_dvc_yaml(data, params_path))
        keep_source(params_path, dvc_path)
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

    from ncil.pipeline import paths
    from ncil.pipeline.config import parse_params
    from ncil.pipeline.dvcgen import render_dvc_yaml

    overrides = [f"+experiment={name}", *(overrides or [])]
    data = compose(overrides)
    params_file = paths.grid_params(name)
    parse_params(data, source=f"conf/ with overrides {overrides}")
    check_own_folder(name, data, overrides[1:])
    if name in paths.EXTRA_GRID_NAMES:  # a grid in a folder of its own, run as params.yaml: params.yaml only
        header = HEADER.replace("`python -m ncil params`", f"`python -m ncil grid {name}`").replace(
            "edit conf/ or override.", f"edit conf/ or override.\n# Run it as the default grid: "
                                       f"python -m ncil params +experiment={name} && snakemake --cores N")
        return data, header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100), ""
    if data["dataset"]["name"] != name:
        from ncil.pipeline.config import ConfigError

        raise ConfigError(f"conf/experiment/{name}.yaml: dataset.name: expected {name!r}, got {data['dataset']['name']!r}")
    header = HEADER.replace("`python -m ncil params`", f"`python -m ncil grid {name}`")
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    dvc_text = render_dvc_yaml(data, params_file, wdir="../..").replace(
        "`python -m ncil dvc-yaml` from params.yaml", f"`python -m ncil grid {name}` from {params_file}")
    return data, text, dvc_text


DEFAULT_GRID = "the default grid (conf/config.yaml, params.yaml)"


def _composed_folder(name: str | None) -> str:
    """The folder of grid ``name`` as conf/ composes it without overrides (None: the default grid)."""
    from ncil.pipeline.experiment_grid import grid_folder

    if name not in _FOLDERS:
        _FOLDERS[name] = grid_folder(compose([] if name is None else [f"+experiment={name}"]))
    return _FOLDERS[name]


_FOLDERS: dict[str | None, str] = {}  # one composition per grid and process (`python -m ncil grid` renders four)


def check_own_folder(name: str, data: dict, overrides: list[str] | None = None) -> None:
    """Refuse grid ``name`` (composed as ``data``) when its folder under runs/ and results/ is another grid's: the
    default grid's or another named grid's (paths.GRID_NAMES, paths.EXTRA_GRID_NAMES), each composed from conf/.
    Two grids in one folder would write the same runs/ and results/ paths (experiment_grid.folder_collisions)."""
    from ncil.pipeline import paths
    from ncil.pipeline.config import ConfigError
    from ncil.pipeline.experiment_grid import folder_collisions, grid_folder

    others = [n for n in (*paths.GRID_NAMES, *paths.EXTRA_GRID_NAMES) if n != name]
    folders = {DEFAULT_GRID: _composed_folder(None), **{f"grid {n} (conf/experiment/{n}.yaml)": _composed_folder(n)
                                                      for n in others}}
    mine = f"grid {name} (conf/experiment/{name}.yaml)"
    folders[mine] = grid_folder(data)
    for folder, owner, grid in folder_collisions(folders):
        if grid == mine:
            given = f" with overrides {list(overrides)}" if overrides else ""
            raise ConfigError(f"conf/experiment/{name}.yaml{given}: grid: folder {folder!r} (runs/{folder}/, results/{folder}/) "
                              f"is also the folder of {owner}; expected a folder of its own, e.g. grid: {name}")


def write_grid(name: str, overrides: list[str] | None = None) -> dict:
    from ncil.pipeline import io, paths

    data, params_text, dvc_text = render_grid(name, overrides)
    io.write_text(paths.grid_params(name), params_text)
    if dvc_text:  # none for the default data set's grids (paths.EXTRA_GRID_NAMES)
        io.write_text(paths.grid_dvc_yaml(name), dvc_text)
    return data
