"""Which files of the package a step runs: the transitive ``ncil`` imports of its module (stdlib only).

Each DVC stage and each Snakemake rule lists these files as its code dependency, so an edit to
``ncil/reports/results_table.py`` makes the table steps stale and no training step (both engines agree).

The scan reads the package's own sources with ``ast`` and never imports them, and it never leaves the
package: ``import torch`` is not followed (``modulefinder`` would scan all of torch). Every
``import ncil.x`` / ``from ncil.x import y`` / ``from . import y`` counts, at module level or inside a
function (the CLI imports lazily), and importing ``ncil.a.b`` also runs ``ncil/__init__.py`` and
``ncil/a/__init__.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = "ncil"


def module_file(module: str, root: Path) -> Path | None:
    """The source file of dotted ``module`` below ``root`` (the folder holding the package), if any."""
    base = root.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _is_package(module: str, root: Path) -> bool:
    return (root.joinpath(*module.split(".")) / "__init__.py").is_file()


def _with_parents(module: str) -> list[str]:
    """``a.b.c`` -> [a, a.b, a.b.c]: importing a submodule first runs every enclosing package."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imported_modules(module: str, root: Path, package: str = PACKAGE) -> set[str]:
    """Dotted names of the ``package`` modules that ``module``'s source imports directly (anywhere in it)."""
    path = module_file(module, root)
    if path is None:
        raise FileNotFoundError(f"{module}: no {module.replace('.', '/')}.py or package below {root}")
    tree = ast.parse(path.read_text(), filename=str(path))
    # The package a relative import starts from: the module itself when it is a package's __init__.
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)] if here else []
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names = [base]
            # `from ncil.reports import plots` imports the submodule ncil.reports.plots; `from ncil.pipeline.io import x` does not.
            if base and _is_package(base, root):
                names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
        else:
            continue
        for name in names:
            if name == package or name.startswith(package + "."):
                found.update(m for m in _with_parents(name) if module_file(m, root) is not None)
    found.discard(module)
    return found


def code_files(modules: str | Iterable[str], root: str | Path = ".", package: str = PACKAGE) -> list[str]:
    """Sorted paths (relative to ``root``, POSIX) of every ``package`` file that ``modules`` import,
    transitively, the modules themselves and their enclosing ``__init__.py`` files included."""
    root = Path(root)
    todo = [modules] if isinstance(modules, str) else list(modules)
    seen: set[str] = set()
    for start in list(todo):
        todo += [m for m in _with_parents(start)[:-1] if module_file(m, root) is not None]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imported_modules(module, root, package) - seen)
    return sorted(module_file(m, root).relative_to(root).as_posix() for m in seen)


def step_code_files(verb: str, stages: Mapping[str, str | tuple[str, ...]], root: str | Path = ".",
                    entry: tuple[str, ...] = (), entry_files: tuple[str, ...] = ()) -> list[str]:
    """The code a ``python -m ncil <verb>`` step runs: the closure of the verb's module(s) in ``stages``
    and of the ``entry`` modules (the CLI dispatch), plus ``entry_files`` listed as they are, unscanned."""
    if verb not in stages:
        raise KeyError(f"{verb}: no stage module for this verb (verbs: {', '.join(sorted(stages))})")
    modules = stages[verb]
    modules = (modules,) if isinstance(modules, str) else tuple(modules)
    return sorted({*code_files((*modules, *entry), root), *entry_files})
