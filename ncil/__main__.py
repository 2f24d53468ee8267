"""Command line: ``python -m ncil <verb> ...``. One table maps each verb to the module that runs it.

Every Snakemake rule and every DVC stage calls these verbs with named paths, exactly as a person
would. The workflow's stages are ``ncil.stages.STAGES``, the other commands ``ncil.tools.TOOLS``;
each module has ``HELP``, ``Args``, ``add_arguments`` and ``run``. Expected errors (configuration,
artifact, usage) exit 2 with one line on stderr; anything else exits 1 with one line naming the
log that holds the traceback. Either way, with ``--log``, the traceback is in that file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ncil.stages import STAGES
from ncil.tools import TOOLS

VERBS: dict[str, str] = {**STAGES, **TOOLS}


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
    """Parse the job's params file once (``ncil.cli.load_params`` keeps the parse for the verb), then,
    before anything imports torch: its ``runtime.numerics``; for train and evaluate, the job's own GPU(s)
    (ncil/pipeline/devices.py) and its device (``ncil.learning.runtime.resolve_device``, which refuses a CUDA device this machine
    lacks before any data loads). A missing file is left to the verb, whose message names the flag."""
    if not params_file or verb in SELF_PARSING_VERBS or not os.path.isfile(params_file):
        return
    from ncil.learning import numerics
    from ncil.pipeline import devices
    from ncil.cli import load_params

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
    from ncil.cli import CheckFailed, UsageError, record

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


if __name__ == "__main__":
    sys.exit(main())
