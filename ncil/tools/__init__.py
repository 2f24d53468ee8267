"""Commands that are not workflow stages (measurements, configuration, generators), one module
each, shaped like a stage (``Args``, ``add_arguments``, ``run``): ``python -m ncil <verb>`` runs
``ncil.cli.TOOLS[verb]``."""
