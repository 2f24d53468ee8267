"""Commands that are not workflow stages (measurements, configuration, generators), one module
each, shaped like a stage (``Args``, ``add_arguments``, ``run``): ``python -m ncil <verb>`` runs
``TOOLS[verb]``."""

TOOLS: dict[str, str] = {
    "costs": "ncil.tools.costs",
    "bench": "ncil.tools.bench",
    "bench-data": "ncil.tools.bench_data",
    "params": "ncil.tools.params",
    "grid": "ncil.tools.grid",
    "dvc-yaml": "ncil.tools.dvc_yaml",
}
