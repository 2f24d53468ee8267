"""Command line: ``python -m ncil <verb> ...``. One table maps each verb to the module that runs it.

Every Snakemake rule and every DVC stage calls these verbs with named paths, exactly as a person
would. The workflow's stages are ``STAGES`` (ncil/stages/), the other commands ``TOOLS`` (ncil/tools/);
each module has ``HELP``, ``Args``, ``add_arguments`` and ``run``. Expected errors (configuration,
artifact, usage) exit 2 with one line on stderr; anything else exits 1 with one line naming the
log that holds the traceback. Either way, with ``--log``, the traceback is in that file.

Also what every verb shares: the --params and --log flags, the Args record from argparse, the
expected-error types, and the check that an output never overwrites an input. At import, stdlib only:
the verb modules are named here as strings, and each is imported when the parser is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys

# Verb as typed on the command line -> the module that runs it.
STAGES: dict[str, str] = {
    "prepare": "ncil.stages.prepare",
    "split": "ncil.stages.split",
    "train": "ncil.stages.train",
    "evaluate": "ncil.stages.evaluate",
    "summarize": "ncil.stages.summarize",
    "tables": "ncil.stages.tables",
    "paper-sections": "ncil.stages.paper_sections",
    "paper-tables": "ncil.stages.paper_tables",
    "figures": "ncil.stages.figures",
    "figure4": "ncil.stages.figure4",
    "verify": "ncil.stages.verify",
}

# Commands that are not workflow stages (measurements, configuration, generators), shaped like a stage.
TOOLS: dict[str, str] = {
    "costs": "ncil.tools.costs",
    "bench": "ncil.tools.bench",
    "bench-data": "ncil.tools.bench_data",
    "params": "ncil.tools.params",
    "grid": "ncil.tools.grid",
    "dvc-yaml": "ncil.tools.dvc_yaml",
}

VERBS: dict[str, str] = {**STAGES, **TOOLS}


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


_PARSED: dict[tuple, tuple] = {}  # (real path, inode, size, mtime) -> (Params, raw mapping)


def load_params(path: str):
    """(typed ``Params``, raw mapping) of a params file, parsed once per process by ``ncil.pipeline.config.load_params``.

    ``main`` parses the job's ``--params`` before torch starts (its numerics, GPU claim and device
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ncil", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb, module_name in VERBS.items():
        module = importlib.import_module(module_name)  # light: every heavy import is inside run()
        sp = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(sp)
        sp.set_defaults(module=module_name)
    return parser


# Verbs that report a params file they cannot parse themselves, with advice of their own (dvc-yaml --check
# inside a `dvc exp run`): the CLI leaves the parse to them.
SELF_PARSING_VERBS = ("dvc-yaml",)


def _prepare_job(verb: str, params_file: str | None) -> None:
    """Parse the job's params file once (``load_params`` keeps the parse for the verb), then,
    before anything imports torch: its ``runtime.numerics``; for train and evaluate, the job's own GPU(s)
    (ncil/pipeline/devices.py) and its device (``ncil.learning.runtime.resolve_device``, which refuses a
    CUDA device this machine lacks before any data loads). A missing file is left to the verb, whose
    message names the flag."""
    if not params_file or verb in SELF_PARSING_VERBS or not os.path.isfile(params_file):
        return
    from ncil.learning import numerics
    from ncil.pipeline import devices

    p, _ = load_params(params_file)
    numerics.apply(p.runtime.numerics)
    if verb in devices.CLAIMING_VERBS:
        devices.claim_for_job(p.runtime)
        from ncil.learning import runtime

        runtime.resolve_device(p.runtime.device, source=params_file)


def main(argv: list[str] | None = None) -> int:
    from ncil.pipeline import progress
    from ncil.pipeline.config import ConfigError
    from ncil.pipeline.io import ArtifactError

    namespace = build_parser().parse_args(argv)
    module = importlib.import_module(namespace.module)
    log_file = getattr(namespace, "log", None)
    try:
        try:
            progress.get_logger(log_file)
        except OSError as err:
            raise ArtifactError(f"--log {log_file}: cannot write the log here ({err.strerror or err})") from None
        progress.log_line("python -m ncil " + " ".join(sys.argv[1:] if argv is None else argv))
        _prepare_job(namespace.verb, getattr(namespace, "params", None))
        module.run(record(module.Args, namespace))
    except (ConfigError, ArtifactError, UsageError) as err:
        progress.log_failure(f"error: {err}", err)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CheckFailed as err:
        progress.log_failure(str(err), err)
        print(err, file=sys.stderr)
        return 1
    except Exception as err:  # a bug or an unforeseen fault: the traceback must not be lost
        line = f"error: {type(err).__name__}: {err}"
        if log_file:
            progress.log_failure(line, err)
            print(f"{line} (traceback in {log_file})", file=sys.stderr)
        else:
            import traceback

            traceback.print_exception(err, file=sys.stderr)
            print(line, file=sys.stderr)
        return 1
    finally:
        progress.close()
    return 0
