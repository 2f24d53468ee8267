"""Provenance recorded in result files: a code version that reruns of the same code reproduce."""

from __future__ import annotations

import hashlib
from pathlib import Path


def code_version() -> str:
    """SHA-256 (first 16 hex digits) over the package's Python sources, by relative path.

    A git commit id would change with every commit, even one that touches no code, and break
    byte-identical reruns; this hash changes only when the package's code does.
    """
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(file.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def setting_label(initial: int, increment: int, n_tasks: int) -> str:
    """The paper's name of a setting: F + C x T (T incremental tasks after the base task).

    Exact for every setting that exists: ``ncil.data.scenario.task_sizes`` (and so ``params.yaml``'s
    parser and ``split``) refuses an increment C that does not divide the classes after the base task.
    """
    return f"{initial}+{increment}x{n_tasks - 1}"
