"""Results tables: mean and standard deviation over seeds of each (setting, method)."""

from __future__ import annotations

import math

import numpy as np

COLUMNS = ("avg_accuracy", "last_accuracy", "avg_forgetting")
HEADERS = {"avg_accuracy": "Avg", "last_accuracy": "Last", "avg_forgetting": "Forgetting"}


def aggregate(metrics: list[dict]) -> list[dict]:
    """Group metrics.json contents by (setting, method); mean, std (ddof=1, 0 for one seed), n."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for m in metrics:
        groups.setdefault((m["run"]["setting"], m["run"]["method"]), []).append(m)
    rows = []
    for (setting, method), members in groups.items():
        members = sorted(members, key=lambda m: m["run"]["seed"])
        row = {"setting": setting, "label": members[0]["run"]["label"], "method": method,
               "seeds": [m["run"]["seed"] for m in members], "n": len(members)}
        for col in COLUMNS:
            values = np.array([m[col] for m in members], float)
            row[f"{col}_mean"] = float(values.mean())
            row[f"{col}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def _pm(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def to_markdown(rows: list[dict], dataset: str, context: dict) -> str:
    lines = [
        f"# Results on {dataset}",
        "",
        f"Preset `{context['preset']}`; metric convention `{context['convention']}` (sample-weighted Acc_k, "
        "base task included in Avg, forgetting with the max over earlier steps); class-order seed "
        f"{context['order_seed']}; mean ± std over seeds {context['seeds']} (n per row). Accuracies in %.",
        "",
        "| setting | method | Avg | Last | Forgetting | n |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['method']} | {_pm(r['avg_accuracy_mean'], r['avg_accuracy_std'])} | "
            f"{_pm(r['last_accuracy_mean'], r['last_accuracy_std'])} | "
            f"{_pm(r['avg_forgetting_mean'], r['avg_forgetting_std'])} | {r['n']} |"
        )
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    fields = ["setting", "label", "method", "n", "seeds"] + [f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**{k: r[k] for k in fields if k != "seeds"}, "seeds": " ".join(map(str, r["seeds"])),
                         **{f"{c}_{s}": f"{r[f'{c}_{s}']:.4f}" for c in COLUMNS for s in ("mean", "std")}})
    return buf.getvalue()
