"""Task-agnostic evaluation after a task: predict over every class seen so far (method-spec 6.1)."""

from __future__ import annotations

import numpy as np
import torch

from ncil.data import arrays
from ncil.data.scenario import remap_labels
from ncil.learning import runtime
from ncil.methods import adagauss, drift, fecam
from ncil.models.network import IncrementalNet, load_network
from ncil.pipeline.config import MethodConfig, ModelConfig, Params, parse_section, resolve_precision


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
    the prediction is then the Mahalanobis classifier's (``predict_fecam``), not the head's.
    A checkpoint of classifier ncm (drift compensation) predicts the nearest of its own ``prototypes``
    (``predict_ncm``); one of classifier bayes (AdaGauss) the nearest of its own Gaussians (``predict_bayes``).

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
    if uses_gaussians(checkpoint):
        prediction = predict_bayes(net, images, p.dataset.mean, p.dataset.std, p.train.eval_batch_size, device,
                                   checkpoint["adagauss"], n_classes=len(seen))
    elif uses_prototypes(checkpoint):
        prediction = predict_ncm(net, images, p.dataset.mean, p.dataset.std, p.train.eval_batch_size, device,
                                 checkpoint["prototypes"], n_classes=len(seen))
    elif statistics is not None:
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


# --- FeCAM (classifier fecam; docs/efcil.md): the statistics a task wrote (ncil.learning.fecam_training) ---

def classifier_matrices(covariance: torch.Tensor, shrink_times: int) -> torch.Tensor:
    """Stored covariances (C, D, D) -> the classifier's matrices (pure): ``shrink_times`` shrinkages, then the
    correlation normalisation (``fecam.fecam_statistics`` from stored rather than raw features)."""
    for _ in range(shrink_times):
        covariance = fecam.shrink_covariance(covariance)
    return fecam.normalize_covariance(covariance)


def fecam_settings(checkpoint: dict) -> MethodConfig:
    """The FeCAM options a checkpoint was trained with (its ``config.method_config``; unset = the default)."""
    recorded = checkpoint["config"]["method_config"]
    return MethodConfig(base_recipe=str(recorded.get("base_recipe", "")), classifier=recorded.get("classifier", "head"),
                        backbone=recorded.get("backbone", "vit"),
                        fecam_tukey=float(recorded.get("fecam_tukey", MethodConfig.fecam_tukey)),
                        fecam_shrink_times=int(recorded.get("fecam_shrink_times", MethodConfig.fecam_shrink_times)))


def uses_statistics(checkpoint: dict) -> bool:
    """Whether a checkpoint classifies with FeCAM's statistics (its method's classifier is fecam)."""
    return checkpoint["config"]["method_config"].get("classifier", "head") == "fecam"


@torch.no_grad()
def predict_fecam(net: IncrementalNet, images: np.ndarray, mean, std, batch_size: int, device: torch.device,
                  statistics: list[dict], settings: MethodConfig, n_classes: int) -> np.ndarray:
    """FeCAM's predictions (N,) (incremental labels) for uint8 images (N, H, W, C): the class of the smallest
    Mahalanobis distance (``fecam.fecam_predict``) over the rows of ``statistics`` (every seen class once)."""
    mean_rows = np.concatenate([s["mean"] for s in statistics])
    cov_rows = np.concatenate([s["covariance"] for s in statistics])
    class_ids = np.concatenate([s["class_id"] for s in statistics])
    if sorted(class_ids.tolist()) != list(range(n_classes)):
        raise ValueError(f"class statistics: expected class ids 0..{n_classes - 1} once each, got {sorted(class_ids.tolist())}")
    order = np.argsort(class_ids)
    prototypes = torch.from_numpy(mean_rows[order]).double()  # (C, D)
    matrices = classifier_matrices(torch.from_numpy(cov_rows[order]).double(), settings.fecam_shrink_times)
    inverse = torch.linalg.pinv(matrices)  # (C, D, D), once for every batch
    net.eval()
    preds = []
    for start in range(0, len(images), batch_size):
        x = arrays.to_tensor(images[start : start + batch_size], mean, std).to(device)  # (b, C, H, W)
        features, _ = net.backbone(x)  # (b, D)
        preds.append(fecam.fecam_predict(features.double().cpu(), prototypes, matrices, lam=settings.fecam_tukey,
                                         inverse=inverse))
    return torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


# --- NCM over stored prototypes (classifier ncm: drift compensation, ncil.learning.drift_training) ---

def uses_prototypes(checkpoint: dict) -> bool:
    """Whether a checkpoint classifies by the nearest of its stored prototypes (its method's classifier is ncm)."""
    return checkpoint["config"]["method_config"].get("classifier", "head") == "ncm"


@torch.no_grad()
def predict_ncm(net: IncrementalNet, images: np.ndarray, mean, std, batch_size: int, device: torch.device,
                prototypes: torch.Tensor, n_classes: int) -> np.ndarray:
    """NCM's predictions (N,) (incremental labels) for uint8 images (N, H, W, C): the nearest of the checkpoint's
    ``prototypes`` (K_seen, D), row k the prototype of label k, after L2-normalising features and prototypes (the
    released ADC/LDC evaluation: ``drift.ncm_distances``), in float64."""
    if prototypes.ndim != 2 or prototypes.shape[0] != n_classes:
        raise ValueError(f"prototypes: expected one row per seen class ({n_classes}), got shape {tuple(prototypes.shape)}")
    protos = prototypes.double()  # (C, D)
    net.eval()
    preds = []
    for start in range(0, len(images), batch_size):
        x = arrays.to_tensor(images[start : start + batch_size], mean, std).to(device)  # (b, C, H, W)
        features, _ = net.backbone(x)  # (b, D)
        preds.append(drift.ncm_predict(features.double().cpu(), protos))
    return torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


# --- Bayes over stored Gaussians (classifier bayes: AdaGauss, ncil.learning.adagauss_training) ---

def uses_gaussians(checkpoint: dict) -> bool:
    """Whether a checkpoint classifies with its stored Gaussians (its method's classifier is bayes)."""
    return checkpoint["config"]["method_config"].get("classifier", "head") == "bayes"


@torch.no_grad()
def predict_bayes(net: IncrementalNet, images: np.ndarray, mean, std, batch_size: int, device: torch.device,
                  gaussians: dict, n_classes: int) -> np.ndarray:
    """AdaGauss's predictions (N,) (incremental labels) for uint8 images (N, H, W, C): the smallest Mahalanobis
    distance (``adagauss.bayes_distances``: covariances shrunk by 3 mean(diag) I and correlation-normalised, latent
    vectors and means L2-normalised, as the released CIFAR-100 runs) from the latent vector ``net(x)["logits"]``
    to every seen class's Gaussian (``gaussians``: the checkpoint's ``mean`` (K, S), ``covariance`` (K, S, S)),
    in float64."""
    means, covs = gaussians["mean"].double(), gaussians["covariance"].double()
    if means.ndim != 2 or means.shape[0] != n_classes or covs.shape != (n_classes, means.shape[1], means.shape[1]):
        raise ValueError(f"adagauss: expected one mean and covariance per seen class ({n_classes}), got shapes "
                         f"{tuple(means.shape)} and {tuple(covs.shape)}")
    net.eval()
    preds = []
    for start in range(0, len(images), batch_size):
        x = arrays.to_tensor(images[start : start + batch_size], mean, std).to(device)  # (b, C, H, W)
        latent = net(x)["logits"].double().cpu()  # (b, S)
        preds.append(adagauss.bayes_distances(latent, means, covs).argmin(1))
    return torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)
