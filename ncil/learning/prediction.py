"""Task-agnostic evaluation after a task: predict over every class seen so far (method-spec 6.1)."""

from __future__ import annotations

import numpy as np
import torch

from ncil.data import arrays
from ncil.data.scenario import remap_labels
from ncil.learning import runtime
from ncil.models.network import load_network
from ncil.pipeline.config import ModelConfig, Params, parse_section, resolve_precision


@torch.no_grad()
def predict(net, images: np.ndarray, mean, std, batch_size: int, device: torch.device, rotations: int = 1,
            precision: str = "fp32", n_classes: int | None = None) -> np.ndarray:
    """Argmax class for uint8 images (N, H, W, C) over the rotation-0 columns of the real classes.

    The columns read are ``logits[:, :rotations * n_classes:rotations]`` (``n_classes`` None: every
    column group of the head), so columns after the real classes' (the official preset's mixup
    classes, method-spec 2.5) are never predicted. With a head of exactly rotations x n_classes
    columns this is ``logits[:, ::rotations]``.

    Each batch is normalised on its own, so memory holds only one float batch (not a float copy of
    the whole test set: ~3 GB for ImageNet-Subset's 5,000 images at 224x224).
    """
    net.eval()
    preds = []
    for start in range(0, len(images), batch_size):
        x = arrays.to_tensor(images[start : start + batch_size], mean, std)  # (b, C, H, W) float32
        with runtime.autocast(device, precision):
            logits = net(x.to(device))["logits"]  # (b, rotations * n_seen)
        end = logits.shape[1] if n_classes is None else rotations * n_classes
        preds.append(logits[:, :end:rotations].float().argmax(1).cpu())  # (b, n_seen) -> (b,)
    return torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


def evaluate_checkpoint(p: Params, checkpoint: dict, test_split: arrays.Split, tasks: list[list[int]],
                        statistics: list[dict] | None = None) -> dict:
    """Predictions of one checkpoint on the test images of every class it has seen.

    ``statistics``: FeCAM's (classifier fecam), those of tasks 0..t, read with ``ncil.pipeline.io.read_statistics``;
    the prediction is then the Mahalanobis classifier's (``ncil.learning.fecam_training.predict_fecam``), not the head's.

    Returns int columns: sample (row in the test split), label (incremental), original_label,
    label_task (the task that introduced the label) and prediction.
    """
    torch.set_num_threads(p.runtime.threads)
    device = runtime.resolve_device(p.runtime.device)
    task = int(checkpoint["task"])
    order = list(checkpoint["class_order"])
    label_map = remap_labels(order)
    seen = [c for t in tasks[: task + 1] for c in t]
    rows, images, labels = arrays.select_classes(test_split, seen, label_map)
    task_of = {c: t for t, classes in enumerate(tasks[: task + 1]) for c in classes}
    model_cfg = parse_section(ModelConfig, checkpoint["config"]["model"], "checkpoint", "config.model")
    backbone = checkpoint.get("backbone", "vit")
    net = load_network(model_cfg, p.dataset.channels, checkpoint["model"], backbone).to(device)
    precision = resolve_precision(p.runtime.precision, device.type, checkpoint["config"].get("preset", "paper"))
    if statistics is not None:
        from ncil.learning.fecam_training import fecam_settings, predict_fecam

        prediction = predict_fecam(net, images, p.dataset.mean, p.dataset.std, p.train.eval_batch_size, device,
                                   statistics, fecam_settings(checkpoint), n_classes=len(seen))
    else:
        prediction = predict(net, images, p.dataset.mean, p.dataset.std, p.train.eval_batch_size, device,
                             int(checkpoint.get("rotations", 1)), precision, n_classes=len(seen))
    return {
        "sample": rows,
        "label": labels,
        "original_label": test_split.labels[rows],
        "label_task": np.asarray([task_of[int(o)] for o in test_split.labels[rows]]),
        "prediction": prediction,
    }
