"""The paper's figures: Figure 3 (accuracy per task) and Figure 4 (PKS weight maps).

Data first, drawing second: ``curve_table`` / ``weight_map_table`` are pure and return the plotted
numbers (written as CSV and checked by ``verify``); ``draw_*`` turn them into a matplotlib figure;
``png_bytes`` renders it deterministically (Agg, fixed dpi, no software/date metadata), so a rerun
writes byte-identical files.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from ncil.reports import paper_values

DPI = 100


def curve_table(rows: list[dict], dataset: str, setting: str, methods: list[str], n_tasks: int | None = None) -> list[dict]:
    """Figure 3's data for one (data set, setting): one record per task (1-based, as the paper's x-axis)
    with each method's mean Acc_k over seeds, its std and n. ``rows`` is ``results_table.aggregate`` output.

    Every method of ``methods`` (the grid's) gets its columns, empty (None) without results, so the
    file's shape depends on the grid alone (DVC's plot definitions name these columns); methods with
    results outside ``methods`` follow. The curve's mean is the table's Avg and its last point the
    table's Last (method-spec 7.6)."""
    found = {r["method"]: r for r in rows if r["dataset"] == dataset and r["setting"] == setting and "curve_mean" in r}
    columns = list(methods) + sorted(set(found) - set(methods))
    if n_tasks is None:
        n_tasks = max((len(r["curve_mean"]) for r in found.values()), default=0)
    out = []
    for k in range(n_tasks):
        rec = {"task": k + 1}
        for m in columns:
            r = found.get(m)
            ok = r is not None and k < len(r["curve_mean"])
            rec[m] = r["curve_mean"][k] if ok else None
            rec[f"{m}_std"] = r["curve_std"][k] if ok else None
            rec[f"{m}_n"] = r["n"] if ok else 0
        out.append(rec)
    return out


def curve_methods(table: list[dict], with_data: bool = True) -> list[str]:
    """Methods of a Figure 3 table (only those with plotted values, unless ``with_data`` is False)."""
    names = [k for k in (table[0] if table else {}) if k != "task" and not k.endswith(("_std", "_n"))]
    return [m for m in names if not with_data or all(r[m] is not None for r in table)]


def table_to_csv(table: list[dict], fields: list[str] | None = None) -> str:
    """CSV with 4-decimal floats (integers as they are)."""
    fields = fields or (list(table[0]) if table else ["task"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for rec in table:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v)) for k, v in rec.items()})
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "ncil", "font.size": 9})
    return plt


def png_bytes(fig) -> bytes:
    """Render a figure to PNG without the metadata that changes between runs."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


OFFICIAL_METHODS = {method for _, method in paper_values.OFFICIAL_ROWS}


def draw_curves(table: list[dict], title: str):
    """Figure 3 panel: Acc_k (mean over seeds, shaded ± std) against the task number, one line per method
    (the official preset's methods dashed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    tasks = [r["task"] for r in table]
    for m in curve_methods(table):
        mean = np.array([r[m] for r in table])
        std = np.array([r[f"{m}_std"] for r in table])
        style = {"color": "tab:red", "linewidth": 2} if m == "ours" else {}
        preset = ""
        if m in OFFICIAL_METHODS:  # the released code's preset: named, dashed (past the 10 colours of the cycle)
            style["linestyle"], preset = "--", ", official preset"
        ax.plot(tasks, mean, marker="o", markersize=3, label=f"{m} (n={table[0][f'{m}_n']}{preset})", **style)
        ax.fill_between(tasks, mean - std, mean + std, alpha=0.15, color=ax.lines[-1].get_color())
    ax.set_xlabel("task (base task = 1)")
    ax.set_ylabel("top-1 accuracy Acc_k (%)")
    ax.set_title(title)
    ax.set_xticks(tasks)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if curve_methods(table):
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


# --- Figure 4: PKS weight maps -------------------------------------------------------------------


def weight_map_table(weights: dict[str, np.ndarray], samples: list[int]) -> list[dict]:
    """Figure 4's data: one record per (map, image, patch) with the per-patch weight w_i.

    ``weights``: map name ("uniform", "task 1", ...) -> (n_images, N) array of weights (rows max-normalised
    to 1, paper Eq. 2); ``samples``: the test-split row of each image."""
    out = []
    for name, w in weights.items():
        for j, sample in enumerate(samples):
            for i, value in enumerate(np.asarray(w, float)[j]):
                out.append({"map": name, "sample": int(sample), "patch": i, "weight": float(value)})
    return out


def draw_weight_maps(images: np.ndarray, weights: dict[str, np.ndarray], title: str):
    """Figure 4: one row per image; columns: image | each map (grey: white = weight 1 = more stability),
    each map's patch grid upsampled to the image."""
    plt = _pyplot()
    names = list(weights)
    n_rows, n_cols = len(images), 1 + len(names)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols, 1.3 * n_rows + 0.4), squeeze=False)
    for j, img in enumerate(images):
        img = np.asarray(img)
        axes[j, 0].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        for c, name in enumerate(names, start=1):
            w = np.asarray(weights[name][j], float)
            side = int(round(math.sqrt(len(w))))
            axes[j, c].imshow(w.reshape(side, side), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                              extent=(0, img.shape[1], img.shape[0], 0))
    for c, name in enumerate(["image", *names]):
        axes[0, c].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def pick_images(labels: np.ndarray, classes: list[int], per_class: int = 1) -> list[int]:
    """The first ``per_class`` test rows of each class in ``classes`` (deterministic image choice)."""
    rows = []
    for c in classes:
        rows += np.flatnonzero(np.asarray(labels) == c)[:per_class].tolist()
    return rows


def weight_maps(p, checkpoints: list[tuple[str, dict]], x, norm: int = 2) -> dict[str, np.ndarray]:
    """Per-patch PKS weights w_i (paper Eq. 2, max-normalised) of images ``x`` (n, C, H, W) under each
    loaded ViT checkpoint (path, payload), plus the uniform map (Table 5's W_i = 1) for comparison.
    Map names number the tasks from 1 (the base task is task 1), as the paper's Figure 4 does."""
    import torch

    from ncil.methods.pks import patch_weights
    from ncil.models.network import load_network
    from ncil.pipeline.config import ModelConfig, parse_section
    from ncil.pipeline.io import ArtifactError

    torch.set_num_threads(p.runtime.threads)  # the thread count changes floating-point results
    out: dict[str, np.ndarray] = {}
    for path, ckpt in checkpoints:
        if ckpt.get("backbone", "vit") != "vit":
            raise ArtifactError(f"{path}: backbone: PKS weight maps need a ViT checkpoint, found {ckpt['backbone']}")
        model_cfg = parse_section(ModelConfig, ckpt["config"]["model"], path, "config.model")
        net = load_network(model_cfg, p.dataset.channels, ckpt["model"]).eval()
        with torch.no_grad():
            cls, patches = net.backbone(x)  # (n, D), (n, N, D)
            if "uniform" not in out:
                out["uniform"] = patch_weights(cls, patches, weighting="uniform").numpy()  # (n, N)
            out[f"after task {int(ckpt['task']) + 1}"] = patch_weights(cls, patches, p=norm).numpy()  # (n, N)
    return out


def weight_map_figure(p, tasks: list[list[int]], test, checkpoints: list[tuple[str, dict]], n_images: int = 4,
                      norm: int = 2) -> tuple[str, bytes]:
    """Figure 4 as (CSV text, PNG bytes): the first test image of each of the first ``n_images`` base-task
    classes, with their weight maps under each checkpoint (``weight_maps``)."""
    from ncil.data.arrays import to_tensor

    samples = pick_images(test.labels, tasks[0][:n_images])
    x = to_tensor(test.images[samples], p.dataset.mean, p.dataset.std)  # (n, C, H, W)
    weights = weight_maps(p, checkpoints, x, norm)
    title = f"{p.dataset.name}: PKS weights w_i (Eq. 2, white = 1)"
    png = png_bytes(draw_weight_maps(np.asarray(test.images[samples]), weights, title))
    return table_to_csv(weight_map_table(weights, samples)), png


def weight_map_files(p, split_file: str, checkpoint_files, n_images: int = 4, norm: int = 2,
                     root: str = ".") -> tuple[str, bytes, int]:
    """Figure 4 from the files a ``figure4`` step reads, under ``root``: (CSV text, PNG bytes, number of
    checkpoints) of ``weight_map_figure`` for the run's split and checkpoints (the ``figure4`` step writes
    them, ``verify`` recomputes them)."""
    from pathlib import Path

    from ncil.data.arrays import load_split
    from ncil.data.splits import read_split
    from ncil.pipeline import io as artifacts

    split = read_split(Path(root) / split_file)
    test = load_split(p.dataset.name, "test", root=str(root))
    checkpoints = [(path, artifacts.load_checkpoint(Path(root) / path)) for path in checkpoint_files]
    csv_text, png = weight_map_figure(p, split["tasks"], test, checkpoints, n_images, norm)
    return csv_text, png, len(checkpoints)
