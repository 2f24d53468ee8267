"""AdaGauss as a method of the pipeline (issue 25; docs/efcil.md, "AdaGauss in the pipeline"): what each task stores
for the next (every seen class's Gaussian in the latent space: the new classes' from their latent vectors, the old
classes' carried through the adapter), the adaptation against its exact linear result, config refusals, resume
inside a task to the same bytes, no earlier task's image read, and the Bayes classifier over the stored Gaussians."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml

from ncil.data import arrays
from ncil.learning import adagauss_training, prediction, resume, training
from ncil.methods import adagauss
from ncil.models.network import load_network
from ncil.pipeline import paths
from ncil.pipeline.config import ConfigError, parse_params
from ncil.pipeline.hydra_conf import compose
from tests.conftest import ROOT
from tests.test_efc_pipeline import _same, _split, quiet  # the same tiny split, byte comparison and logger
from tests.test_resume import StopAfter

# In-process runs: ResNet-18 on a random 8x8 split of 6 classes x 10 images, tasks [0..3] and [4, 5]; 2 epochs of
# batch 16 (task 0: 40 images, 2 full steps; task 1: 20 images, 1 full step: the last, smaller batch is dropped),
# latent space of 8 dimensions, 500 samples per adapted class.
TINY = ["+experiment=digits_efcil", "train=smoke", "train.epochs=2", "train.batch_size=16", "runtime.device=cpu",
        "scenario=[base4_inc2]", "seeds=[1]", "method=[adagauss_digits]", "method.adagauss.adagauss_samples=500"]
TASKS = [[0, 1, 2, 3], [4, 5]]
LATENT = 8


def _job(p, task: int) -> training.TaskJob:
    return training.TaskJob(task, 1, list(range(10)), TASKS, "adagauss_resnet18" if task == 0 else "adagauss",
                            p.method["adagauss"], {"task": task})


@pytest.fixture(scope="module")
def tiny():
    p = parse_params(compose(TINY))
    data = _split()
    zero = adagauss_training.train_adagauss_task(p, _job(p, 0), data, None, None, quiet())
    one = adagauss_training.train_adagauss_task(p, _job(p, 1), data, *zero, quiet())
    return p, data, zero, one


# --- configuration ---------------------------------------------------------------------------------------------

def test_adagauss_composes_into_the_digits_efcil_grid_with_its_own_task_0():
    p = parse_params(compose(["+experiment=digits_efcil"]))
    m = p.method["adagauss"]
    assert (m.adagauss, m.classifier, m.backbone, m.base_recipe) == (True, "bayes", "resnet18", "adagauss_resnet18")
    assert (m.adagauss_latent, m.adagauss_lambda, m.adagauss_alpha, m.adagauss_beta, m.adagauss_samples,
            m.adagauss_adapter_lr) == (8, 10.0, 1.0, 1.0, 10000, 0.01)  # the digits' S; the released constants
    released = yaml.safe_load((ROOT / "conf/method/adagauss.yaml").read_text())["adagauss"]
    assert released["adagauss_latent"] == 64 and released["adagauss_samples"] == 10000  # the method's own file
    committed = yaml.safe_load((ROOT / paths.grid_params("digits_efcil")).read_text())
    assert committed == compose(["+experiment=digits_efcil"]) and "adagauss" in committed["method"]
    assert not any(m.adagauss for m in parse_params(compose([])).method.values())  # not in the default grid
    # The digits' S lives in conf/method/adagauss_digits.yaml, not in the experiment: a subset of the grid's methods
    # (bench, tests: method=[...]) composes without a partial adagauss entry; AdaGauss alone at 64 is refused.
    assert list(parse_params(compose(["+experiment=digits_efcil", "method=[fecam]"])).method) == ["fecam"]
    with pytest.raises(ConfigError, match=r"method.adagauss.adagauss_latent: .* expected less than train.batch_size "
                                          r"\(16\), got 64"):
        parse_params(compose(["+experiment=digits_efcil", "method=[adagauss]"]))


@pytest.mark.parametrize(("method", "key", "value", "message"), [
    ("efc_pp", "adagauss_latent", 16, "method.efc_pp.adagauss_latent: only AdaGauss uses it: expected 64 without "
                                      "adagauss, got 16 (or set method.efc_pp.adagauss: true)"),
    ("fecam", "classifier", "bayes", "method.fecam.classifier: the Bayes classifier reads AdaGauss's Gaussians"),
    ("adagauss", "classifier", "ncm", "method.adagauss.classifier: AdaGauss classifies with its Gaussians: expected "
                                      "'bayes', got 'ncm'"),
    ("adagauss", "adagauss_latent", 16, "method.adagauss.adagauss_latent: the anti-collapse loss needs a batch larger "
                                        "than the latent space: expected less than train.batch_size (16), got 16"),
    ("adagauss", "adagauss_alpha", -1.0, "method.adagauss.adagauss_alpha: expected a weight >= 0, got -1.0"),
    ("adagauss", "adagauss_beta", 0.0, "method.adagauss.adagauss_beta: expected a positive value, got 0.0"),
    ("adagauss", "adagauss_samples", 1, "method.adagauss.adagauss_samples: expected at least 2"),
    ("adagauss", "feature_kd", 10.0, "method.adagauss.feature_kd: AdaGauss's step is cross-entropy + projected "
                                     "distillation + anti-collapse (adagauss true): expected 0.0, got 10.0"),
    ("adagauss", "backbone", "hybrid", "method.adagauss.backbone: expected one of ['resnet18', 'vit'], got 'hybrid'"),
])
def test_adagauss_options_are_checked_naming_the_file_and_field(method, key, value, message):
    data = compose(["+experiment=digits_efcil"])
    data["method"][method][key] = value
    with pytest.raises(ConfigError, match=f"^params.yaml: {re.escape(message)}"):
        parse_params(data)


def test_train_task_refuses_an_adagauss_task():
    p = parse_params(compose(TINY))
    with pytest.raises(ValueError, match="method adagauss: AdaGauss's tasks are ncil.learning.adagauss_training"):
        training.train_task(p, _job(p, 1), None, None, None, quiet())


def test_a_previous_checkpoint_without_the_gaussians_is_refused(tiny):
    p, data, zero, _ = tiny
    bare = {k: v for k, v in zero[0].items() if k != "adagauss"}
    with pytest.raises(ValueError, match="previous checkpoint: adagauss: missing"):
        adagauss_training.train_adagauss_task(p, _job(p, 1), data, bare, zero[1], quiet())


# --- what each task stores -------------------------------------------------------------------------------------

def _latent(p, task: int, data, payload: dict) -> tuple[torch.Tensor, torch.Tensor]:
    net = load_network(p.model, 1, payload["model"], "resnet18")
    _, images, labels = arrays.select_classes(data, TASKS[task], {c: c for c in range(10)})
    x = arrays.to_uint8_tensor(images)
    f = adagauss_training.latent_features(net, x, 64, torch.device("cpu"), p.dataset.mean, p.dataset.std)
    return f, torch.from_numpy(labels.astype(np.int64))


def test_task_0_stores_the_gaussians_of_its_classes_in_the_latent_space(tiny):
    p, data, (payload, centers), _ = tiny
    assert payload["model"]["head.weight"].shape == (LATENT, 512)  # the head is the bottleneck 512 -> S
    f, labels = _latent(p, 0, data, payload)
    assert f.shape == (40, LATENT) and labels.tolist() == np.repeat([0, 1, 2, 3], 10).tolist()
    stored = payload["adagauss"]
    assert stored["mean"].dtype == torch.float32 and stored["covariance"].dtype == torch.float64
    np.testing.assert_array_equal(stored["mean"].numpy(), centers["center"])  # one owner of the values: the rows
    for c in range(4):  # no flips: the digits do not flip (dataset.hflip false)
        np.testing.assert_allclose(centers["center"][c], f[labels == c].mean(0).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stored["covariance"][c].numpy(), np.cov(f[labels == c].double().numpy().T),
                                   rtol=1e-4, atol=1e-7)
    assert torch.equal(stored["covariance"], stored["covariance"].transpose(1, 2))
    assert len(payload["history"]) == 2 and "adapter_history" not in payload


def test_task_1_adapts_the_old_gaussians_and_adds_the_new_ones(tiny, monkeypatch):
    """The old rows are exactly what ``adapted`` returns for task 0's stored Gaussians; the new ones are the new
    model's latent statistics; the adapter trained epochs // 2 = 1 epoch."""
    p, data, zero, one = tiny
    payload, centers = one
    assert len(payload["adapter_history"]) == 1 and len(payload["history"]) == 2
    assert centers["task"].tolist() == [0, 0, 0, 0, 1, 1] and centers["n_samples"].tolist() == [10] * 6
    for k in ("class_id", "original_class", "task", "n_samples", "spread"):
        np.testing.assert_array_equal(centers[k][:4], zero[1][k])
    moved = np.linalg.norm(centers["center"][:4] - zero[1]["center"], axis=1)
    assert moved.min() > 1e-4  # the adapter moved every old mean
    f, labels = _latent(p, 1, data, payload)
    np.testing.assert_allclose(centers["center"][4:], [f[labels == c].mean(0).numpy() for c in (4, 5)],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(payload["adagauss"]["mean"].numpy(), centers["center"])
    seen = {}
    real = adagauss_training.adapted

    def record(adapter, means, covs, n_samples, generator):
        seen.update(means=means.clone(), covs=covs.clone(), n=n_samples)
        out = real(adapter, means, covs, n_samples, generator)
        seen["out"] = out
        return out

    monkeypatch.setattr(adagauss_training, "adapted", record)
    again = adagauss_training.train_adagauss_task(p, _job(p, 1), data, *zero, quiet())
    assert seen["n"] == 500
    assert torch.equal(seen["means"], zero[0]["adagauss"]["mean"]) and torch.equal(seen["covs"], zero[0]["adagauss"]["covariance"])
    np.testing.assert_array_equal(again[1]["center"][:4], seen["out"][0].float().numpy())
    assert torch.equal(again[0]["adagauss"]["covariance"][:4], seen["out"][1])


def test_adaptation_through_a_linear_adapter_matches_the_exact_result():
    """Through x -> A x + b the adapted Gaussian is exactly (A mu + b, A Sigma A^T) (``adapt_gaussians_linear``); the
    sampled estimate with N = 40000 is within 4 standard errors: the mean's per-coordinate error has std
    sqrt((A Sigma A^T)_ii / N) <= sqrt(16 / 40000) = 0.02, so 0.08; a covariance entry's error std is about
    sqrt(2 / N) x 16 = 0.11 relative to the largest entry 16, so 0.5 absolute."""
    adapter = torch.nn.Linear(2, 2)
    with torch.no_grad():
        adapter.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 2.0]]))
        adapter.bias.copy_(torch.tensor([0.0, 1.0]))
    means = torch.tensor([[1.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    covs = torch.stack([torch.diag(torch.tensor([1.0, 4.0])), torch.tensor([[2.0, 0.5], [0.5, 1.0]])]).double()
    exact_means, exact_covs = adagauss.adapt_gaussians_linear(adapter.weight.double().detach(),
                                                              adapter.bias.double().detach(), means, covs)
    assert exact_means[0].tolist() == [1.0, 1.0] and exact_covs[0].tolist() == [[5.0, 8.0], [8.0, 16.0]]
    got_means, got_covs = adagauss_training.adapted(adapter, means, covs, 40000, torch.Generator().manual_seed(0))
    assert got_means.dtype == got_covs.dtype == torch.float64 and torch.equal(got_covs, got_covs.transpose(1, 2))
    assert (got_means - exact_means).abs().max() < 0.08
    assert (got_covs - exact_covs).abs().max() < 0.5


def test_a_stored_covariance_that_cannot_be_sampled_is_refused_naming_its_class():
    covs = torch.stack([torch.eye(2), torch.tensor([[1.0, 1.0], [1.0, 1.0]])]).double()  # class 1: rank 1
    with pytest.raises(ValueError, match="adagauss: the stored covariance of class 1 is not positive definite"):
        adagauss_training.adapted(torch.nn.Linear(2, 2), torch.zeros(2, 2), covs, 10, torch.Generator())


# --- the Bayes classifier over the stored Gaussians ----------------------------------------------------------------

class _Pixels(torch.nn.Module):
    """A stand-in network whose latent vector is the first two pixels of each (1, 1, 2) image, unnormalised."""

    def forward(self, x):
        return {"logits": x.flatten(1)[:, :2]}


def test_predict_bayes_is_the_nearest_gaussian_of_the_core_distances():
    """Two classes around (1, 0) and (0, 1) (identity covariances): after L2 normalisation an image (3, 1) is
    nearer class 0, (1, 4) nearer class 1; predict_bayes agrees with ``bayes_distances``' argmin on 50 random
    images, and a checkpoint with one Gaussian short of the seen classes is refused."""
    gauss = {"mean": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "covariance": torch.eye(2).expand(2, 2, 2).double()}
    images = np.array([[[[3], [1]]], [[[1], [4]]]], dtype=np.uint8)  # (N, H=1, W=2, C=1)
    pred = prediction.predict_bayes(_Pixels(), images, [0.0], [1 / 255], 8, torch.device("cpu"), gauss, 2)
    assert pred.tolist() == [0, 1]
    rng = np.random.default_rng(0)
    many = rng.integers(0, 256, (50, 1, 2, 1), dtype=np.uint8)
    got = prediction.predict_bayes(_Pixels(), many, [0.0], [1 / 255], 16, torch.device("cpu"), gauss, 2)
    latent = torch.from_numpy(many.reshape(50, 2).astype(np.float64))
    assert got.tolist() == adagauss.bayes_distances(latent, gauss["mean"].double(), gauss["covariance"]).argmin(1).tolist()
    with pytest.raises(ValueError, match=r"adagauss: expected one mean and covariance per seen class \(3\)"):
        prediction.predict_bayes(_Pixels(), images, [0.0], [1 / 255], 8, torch.device("cpu"), gauss, 3)


def test_evaluation_of_an_adagauss_checkpoint_uses_its_gaussians(tiny):
    p, data, _, (payload, _) = tiny
    assert prediction.uses_gaussians(payload) and not prediction.uses_prototypes(payload)
    out = prediction.evaluate_checkpoint(p, payload, data, TASKS)
    net = load_network(p.model, 1, payload["model"], "resnet18")
    expected = prediction.predict_bayes(net, data.images, p.dataset.mean, p.dataset.std, 512, torch.device("cpu"),
                                        payload["adagauss"], 6)
    assert out["prediction"].tolist() == expected.tolist() and set(out["prediction"].tolist()) <= set(range(6))


# --- resume, determinism, exemplar-free ------------------------------------------------------------------------

def test_a_task_stopped_at_every_step_boundary_ends_in_the_uninterrupted_bytes(tiny, tmp_path):
    """Task 0 has 40 images, 2 full steps per epoch: stopped after every step, resumed, it ends in the bytes of the
    uninterrupted run (and of a second uninterrupted run); another lambda gives other bytes."""
    p, data, zero, one = tiny
    state_file, ident, state, positions = tmp_path / "r.pt", {"task": 0}, None, []
    while True:
        plan = resume.Plan(path=state_file, state=state, save=lambda g: resume.save(state_file, ident, g), every=1,
                           stop_requested=StopAfter(2))
        try:
            out = adagauss_training.train_adagauss_task(p, _job(p, 0), data, None, None, quiet(), plan)
            break
        except resume.Preempted as stop:
            positions.append((stop.epoch, stop.step))
            state = resume.load(state_file, ident)
    assert positions == [(0, 1), (1, 0), (1, 1), (2, 0)]  # the last: a stop request after the last step
    assert _same(out, zero)
    assert _same(adagauss_training.train_adagauss_task(p, _job(p, 1), data, *zero, quiet()), one)
    other = parse_params(compose([*TINY, "method.adagauss.adagauss_lambda=1.0"]))
    assert not _same(adagauss_training.train_adagauss_task(other, _job(other, 1), data, *zero, quiet()), one)


def test_task_1_reads_no_image_of_an_earlier_task(tiny):
    """Task 1 given the split without task 0's images, or with them replaced by noise, gives the same bytes."""
    p, data, zero, one = tiny
    old = np.isin(data.labels, TASKS[0])
    noise = data.images.copy()
    noise[old] = np.random.default_rng(1).integers(0, 256, noise[old].shape, dtype=np.uint8)
    for other in (arrays.Split(data.images[~old], data.labels[~old]), arrays.Split(noise, data.labels)):
        assert _same(adagauss_training.train_adagauss_task(p, _job(p, 1), other, *zero, quiet()), one)


def test_adagauss_runs_on_the_vit_backbone_too():
    """On the tiny ViT (D = 16, no BatchNorm) the bottleneck maps 16 -> 8 and tasks 0 and 1 store the Gaussians at
    S = 8; the released ViT option (a DINO ViT-S/16 with the last block trained) is not this, docs/efcil.md."""
    p = parse_params(compose([*TINY, "method.adagauss.backbone=vit", "model=vit_digits_tiny"]))
    zero = adagauss_training.train_adagauss_task(p, _job(p, 0), _split(), None, None, quiet())
    one = adagauss_training.train_adagauss_task(p, _job(p, 1), _split(), *zero, quiet())
    assert zero[0]["model"]["head.weight"].shape == (LATENT, 16) and zero[0]["adagauss"]["covariance"].shape == (4, 8, 8)
    assert one[0]["adagauss"]["mean"].shape == (6, 8) and one[1]["center"].shape == (6, 8)
    assert all(torch.isfinite(t).all() for t in one[0]["adagauss"].values())


def test_the_anti_collapse_loss_refuses_a_batch_no_wider_than_the_latent_space_on_the_cpu():
    """4 latent vectors of 8 dimensions have a covariance of rank 3: no Cholesky factor (the config refuses such a
    batch before training; this is the loss's own guard, which a GPU run skips to stay free of host syncs)."""
    with pytest.raises(ValueError, match=r"anti-collapse loss: the batch covariance of \(4, 8\) latent vectors is not "
                                         r"positive definite"):
        adagauss.anti_collapse_loss(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)))
