"""What every verb shares: the --params and --log flags, the Args record from argparse, the
expected-error type, and the check that an output never overwrites an input (stdlib only)."""

from __future__ import annotations

import argparse
import dataclasses
import os


class UsageError(Exception):
    """A command line that cannot run as given (names the flag, the value and what was expected).

    Like ``ConfigError`` and ``ArtifactError``, an expected error: one line on stderr, exit 2."""


class CheckFailed(Exception):
    """A check verb found a difference (verify, ``--check``): one line on stderr, exit 1."""


def add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="composed configuration (default params.yaml)")


def add_log(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", help="log file (created with its folders; a failure's traceback goes here; "
                                      "default: stderr only)")


def record(cls, namespace: argparse.Namespace):
    """The frozen ``Args`` record ``cls`` filled from parsed flags (lists become tuples)."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(namespace, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def parse(module, argv: list[str]):
    """Parse ``argv`` (after the verb) with ``module``'s flags into its ``Args`` record."""
    parser = argparse.ArgumentParser(prog=f"python -m ncil {getattr(module, 'VERB', module.__name__)}")
    module.add_arguments(parser)
    return record(module.Args, parser.parse_args(argv))


_PARSED: dict[tuple, tuple] = {}  # (real path, inode, size, mtime) -> (Params, raw mapping)


def load_params(path: str):
    """(typed ``Params``, raw mapping) of a params file, parsed once per process by ``ncil.pipeline.config.load_params``.

    ``ncil/__main__.py`` parses the job's ``--params`` before torch starts (its numerics, GPU claim and device
    come from it); the verb's own call then gets that same parse. A file changed since is parsed again."""
    from ncil.pipeline.config import load_params as load

    try:
        st = os.stat(path)
    except OSError:
        return load(path)  # its error names the file
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _PARSED:
        _PARSED[key] = load(path)
    return _PARSED[key]


def read_metrics(files) -> list[dict]:
    """The metrics.json files a report step reads (``--metrics``), each checked to be JSON."""
    from ncil.pipeline import io

    return [io.read_json(path, "metrics file") for path in files]


def _same(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def refuse_overlap(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """Refuse an output path that is an input or another output (same path, symlink or hard link).

    ``outputs`` and ``inputs`` map a flag (``--checkpoint``) to its path; ``None`` entries are skipped.
    """
    outs = [(flag, path) for flag, path in outputs.items() if path]
    ins = [(flag, path) for flag, path in inputs.items() if path]
    for i, (flag, path) in enumerate(outs):
        for other_flag, other in ins + outs[i + 1:]:
            if _same(path, other):
                kind = "input" if (other_flag, other) in ins else "output"
                raise UsageError(f"{flag} {path}: is the same file as the {kind} {other_flag} {other}: "
                                 "an output may not overwrite an input or another output")
