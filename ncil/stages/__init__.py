"""The workflow's stages, one module each: ``python -m ncil <verb>`` runs ``ncil.cli.STAGES[verb]``.

Every stage module has the same shape: a frozen ``Args`` record (its command-line flags, typed),
``add_arguments(parser)``, a pure core (parsed data in, data out, no disk I/O), the schema of the
artifact it writes where it writes one, and a thin ``run(args)`` that reads and writes through
``ncil.pipeline.io``. The workflow (``ncil.pipeline.workflow``) derives each step's code dependencies
from the imports of the module ``ncil.cli.STAGES`` names, so a stage module imports only what it runs;
library code (ncil/data, ncil/learning, ncil/pipeline, ncil/reports) never imports a verb module.
"""
