"""The workflow's stages, one module each: ``python -m ncil <verb>`` runs ``STAGES[verb]``.

Every stage module has the same shape: a frozen ``Args`` record (its command-line flags, typed),
``add_arguments(parser)``, a pure core (parsed data in, data out, no disk I/O), the schema of the
artifact it writes where it writes one, and a thin ``run(args)`` that reads and writes through
``ncil.pipeline.io``. The workflow (``ncil.pipeline.workflow``) derives each step's code dependencies from the imports
of the module named here, so a stage module imports only what it runs.
"""

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
