"""The layout of ``metrics.json``, one run's results: written by the ``summarize`` step, read by the tables,
the figures and ``verify``.

``build_metrics`` makes the record and ``validate_metrics`` / ``layout_problem`` check it; the keys are listed
here only. ``provenance.precision`` is the arithmetic the run's checkpoints were trained in (each checkpoint's
``config.runtime.precision``, resolved on its device by ``ncil.pipeline.config.resolve_precision``: fp32 on a
CPU), ``training_precision`` of the checkpoints; files written without it lack the key.
"""

from __future__ import annotations

RUN_KEYS = ("dataset", "setting", "method", "seed", "label")
PROVENANCE_KEYS = ("preset", "metric_convention", "order_seed", "seed", "code_fingerprints", "class_order")
SUMMARY_KEYS = ("avg_accuracy", "last_accuracy", "avg_forgetting", "accuracy_per_step")  # metrics.summarize
TOP_LEVEL_KEYS = ("run", "provenance", "acc_matrix", "test_counts", *SUMMARY_KEYS, "variants")
OPTIONAL_KEYS = ("variants",)  # files written before the variants were added lack them
# provenance.precision is not in PROVENANCE_KEYS: files written before it was recorded lack it.
UNRECORDED_PRECISION = "unrecorded"  # a checkpoint (or metrics file) from before the precision was recorded


def join_values(values) -> str:
    """Distinct values, each split at ", ", joined by ", " shortest first, then alphabetically (pure; the
    tables join several runs' precisions, presets, ... the same way)."""
    found = {part for v in values for part in str(v).split(", ")}
    return ", ".join(sorted(found, key=lambda v: (len(v), v)))


def training_precision(configs: list[dict]) -> str:
    """The precision the checkpoints with these config snapshots were trained in (pure): each one's
    ``runtime.precision`` (``UNRECORDED_PRECISION`` where a snapshot has none: trained before it was
    recorded), the distinct values ``join_values``-joined (a run whose base task ran on a GPU in bf16 and
    the later tasks on a CPU: "bf16, fp32")."""
    return join_values(str(c.get("runtime", {}).get("precision", UNRECORDED_PRECISION)) for c in configs)


def build_metrics(evaluations: list[dict], split: dict, run: dict, preset: str, order_seed: int,
                  code_fingerprints: dict[str, str], precision: str | None = None) -> dict:
    """The metrics record of one run (pure). ``run``: dataset, setting, method, seed. ``precision``
    (``training_precision`` of its checkpoints): recorded in the provenance when given.
    ``code_fingerprints``: the code fingerprint of each step kind that made it (ncil/pipeline/fingerprints.py)."""
    from ncil.pipeline.provenance import setting_label
    from ncil.reports import metrics

    acc, counts = metrics.accuracy_matrix(evaluations)
    summary = metrics.summarize(acc, counts)
    n_tasks = len(split["tasks"])
    return {
        "run": {**run, "label": setting_label(split["initial_increment"], split["increment"], n_tasks)},
        "provenance": {"preset": preset, "metric_convention": metrics.CONVENTION, "order_seed": order_seed,
                       "seed": run["seed"], "code_fingerprints": dict(code_fingerprints), "class_order": split["class_order"],
                       **({} if precision is None else {"precision": precision})},
        "acc_matrix": [[None if v != v else float(v) for v in row] for row in acc],
        "test_counts": [int(c) for c in counts],
        **summary,
        # Other systems' conventions, under their own names (metrics.md); the tables never use them.
        "variants": metrics.variants(acc, counts, [len(t) for t in split["tasks"]]),
    }


def layout_problem(data) -> tuple[str, str] | None:
    """The first (section, key) of the metrics layout that ``data`` lacks, or None (pure)."""
    if not isinstance(data, dict):
        return "(top level)", "(a JSON object)"
    for key in TOP_LEVEL_KEYS:
        if key not in data and key not in OPTIONAL_KEYS:
            return "(top level)", key
    for section, keys in (("run", RUN_KEYS), ("provenance", PROVENANCE_KEYS)):
        if not isinstance(data[section], dict):
            return section, "(a JSON object)"
        for key in keys:
            if key not in data[section]:
                return section, key
    return None


def validate_metrics(data, source) -> dict:
    from ncil.pipeline.io import ArtifactError

    problem = layout_problem(data)
    if problem is not None:
        raise ArtifactError(f"{source}: {problem[0]}: {problem[1]}: missing from the metrics file")
    return data
