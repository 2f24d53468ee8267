"""Batched augmentation (ncil.data.augment): exact pixels, torchvision's definitions, seeded draws."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ncil.data import arrays
from ncil.learning import runtime
from ncil.pipeline.config import ConfigError, parse_params
from ncil.data.augment import (
    AugmentSpec,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment_batch,
    color_jitter,
    random_crop,
    random_crop_flip,
    random_hflip,
    random_resized_crop,
    random_resized_crop_params,
    resized_crop,
    spec_from_dataset,
)
from ncil.pipeline.hydra_conf import compose

CIFAR = AugmentSpec(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), crop_padding=4,
                    crop_fill="black", hflip=True, brightness=63 / 255)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n=64, c=3, size=32, seed=0):
    return torch.randint(0, 256, (n, c, size, size), generator=gen(seed), dtype=torch.uint8)


# --- crop and flip -------------------------------------------------------------------------------

def test_crop_takes_the_window_at_the_drawn_offset():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).repeat(200, 1, 1, 1)  # (200, 1, 4, 4)
    out = random_crop(x, 1, gen(3), fill=-1.0)
    g = gen(3)
    dy = torch.randint(0, 3, (200,), generator=g)
    dx = torch.randint(0, 3, (200,), generator=g)
    padded = np.pad(x[0, 0].numpy(), 1, constant_values=-1.0)  # (6, 6)
    for i in range(200):
        assert np.array_equal(out[i, 0].numpy(), padded[dy[i] : dy[i] + 4, dx[i] : dx[i] + 4])
    # hand-checked windows: offset (0, 0) shifts the image down-right, offset (2, 2) up-left
    top_left = out[(dy == 0) & (dx == 0)][0, 0]
    assert top_left[0].tolist() == [-1, -1, -1, -1] and top_left[1].tolist() == [-1, 0, 1, 2]
    bottom_right = out[(dy == 2) & (dx == 2)][0, 0]
    assert bottom_right[0].tolist() == [5, 6, 7, -1] and bottom_right[3].tolist() == [-1, -1, -1, -1]
    assert {(int(a), int(b)) for a, b in zip(dy, dx)} == {(a, b) for a in range(3) for b in range(3)}


def test_crop_fills_each_channel_with_its_own_value():
    x = torch.ones(8, 3, 2, 2)
    out = random_crop(x, 2, gen(), fill=(0.1, 0.2, 0.3))
    for c, value in enumerate((0.1, 0.2, 0.3)):
        assert set(out[:, c].flatten().tolist()) == {1.0, float(torch.tensor(value))}
    assert torch.equal(random_crop(x, 0, gen()), x)


def test_flip_mirrors_the_drawn_images_only():
    x = images(100)
    out = random_hflip(x, gen(5))
    flip = torch.rand(100, generator=gen(5)) < 0.5
    assert torch.equal(out[flip], x[flip].flip(3)) and torch.equal(out[~flip], x[~flip])
    assert 30 < int(flip.sum()) < 70


@pytest.mark.parametrize("padding", [0, 2])
def test_fused_crop_and_flip_equal_crop_then_flip(padding):
    x = images(50, size=6)
    fused = random_crop_flip(x, padding, gen(8), fill=7, flip_p=0.5)
    g = gen(8)
    assert torch.equal(fused, random_hflip(random_crop(x, padding, g, fill=7), g))
    assert not torch.equal(fused, x)


def _legacy_augment(x_normalised, padding, generator):
    """The crop of ncil before the batched module (normalise first, then pad with zeros): the digits grid's."""
    n, c, h, w = x_normalised.shape
    padded = F.pad(x_normalised, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = dy.view(n, 1) + torch.arange(h).view(1, h)
    cols = dx.view(n, 1) + torch.arange(w).view(1, w)
    out = padded.permute(0, 2, 3, 1)[torch.arange(n).view(n, 1, 1), rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


def test_digits_augmentation_is_bit_identical_to_the_previous_code():
    p = parse_params(compose([]))  # the default (digits) grid
    spec = spec_from_dataset(p.dataset)
    assert (spec.crop_padding, spec.crop_fill, spec.hflip, spec.jitter) == (1, "mean", False, False)
    raw = torch.randint(0, 256, (300, 8, 8, 1), generator=gen(1), dtype=torch.uint8).numpy()
    old = _legacy_augment(arrays.to_tensor(raw, p.dataset.mean, p.dataset.std), 1, gen(7))
    g = gen(7)
    new = augment_batch(arrays.to_uint8_tensor(raw), spec, g)
    assert new.dtype == torch.float32 and torch.equal(new, old)
    # and it spends exactly the old draws (dy, dx), so every later draw of the step (PR halves, ...) is unchanged
    h = gen(7)
    torch.randint(0, 3, (300,), generator=h), torch.randint(0, 3, (300,), generator=h)
    assert torch.equal(g.get_state(), h.get_state())


# --- random resized crop (ImageNet-Subset, method-spec 2.1) --------------------------------------

def test_resized_crop_of_the_whole_image_is_the_image():
    x = images(6, size=12).float() / 255
    whole = torch.tensor([[0, 0, 12, 12]] * 6)
    assert torch.equal(resized_crop(x, whole, 12), x)


def test_resized_crop_of_a_ramp_hand_checked():
    """Columns 0..7 hold their index; window top 1, left 2, 4 x 4 -> 8 x 8. Output column k reads window
    position (k + 0.5) / 2 - 0.5 clamped to [0, 3], i.e. image column 2 + that: 2, 2.25, 2.75, ..., 4.75, 5."""
    ramp = torch.arange(8, dtype=torch.float32).repeat(8, 1)  # ramp[r, c] = c
    x = torch.stack([ramp, ramp.T]).unsqueeze(0)  # (1, 2, 8, 8): channel 1 is the row index
    out = resized_crop(x, torch.tensor([[1, 2, 4, 4]]), 8)
    expected = [2.0, 2.25, 2.75, 3.25, 3.75, 4.25, 4.75, 5.0]
    assert out[0, 0].tolist() == [expected] * 8
    assert out[0, 1, :, 0].tolist() == [e - 1 for e in expected]  # rows 1..4: 1, 1.25, ..., 4
    # a 3-pixel-wide window shrunk to 2 columns: positions 0.25 and 1.75 of columns 5..7 -> 5.25, 6.75
    assert resized_crop(x, torch.tensor([[0, 5, 3, 3]]), 2)[0, 0].tolist() == [[5.25, 6.75]] * 2


def test_resized_crop_equals_interpolate_on_each_cropped_window():
    x = images(40, size=16).float() / 255
    windows = random_resized_crop_params(40, 16, 16, gen(12))
    out = resized_crop(x, windows, 16)
    for i, (t, l, h, w) in enumerate(windows.tolist()):
        window = x[i : i + 1, :, t : t + h, l : l + w]
        expected = F.interpolate(window, size=(16, 16), mode="bilinear", align_corners=False)
        assert torch.allclose(out[i], expected[0], atol=1e-6)
        assert torch.allclose(out[i], TF.resized_crop(x[i], t, l, h, w, [16, 16], antialias=True), atol=1e-6)


def _torchvision_window(u, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """RandomResizedCrop.get_params written per image in Python, reading its uniforms from the row ``u``."""
    area = height * width
    log_lo, log_hi = np.log(ratio[0]), np.log(ratio[1])
    for k in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[k])
        aspect = np.exp(log_lo + (log_hi - log_lo) * u[10 + k])
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[20] * (height - h + 1)), int(u[21] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def test_crop_windows_follow_torchvision_rule_and_respect_scale_and_ratio():
    n, side = 4000, 224
    windows = random_resized_crop_params(n, side, side, gen(3))
    u = torch.rand(n, 22, generator=gen(3)).double().numpy()  # the same single draw
    assert windows.tolist() == [list(_torchvision_window(row, side, side)) for row in u]
    top, left, h, w = windows.T
    assert bool(((top >= 0) & (left >= 0) & (top + h <= side) & (left + w <= side) & (h > 0) & (w > 0)).all())
    # bounds up to the rounding of each side to whole pixels (+-0.5)
    share_hi = (h + 0.5) * (w + 0.5) / side**2
    share_lo = (h - 0.5) * (w - 0.5) / side**2
    assert bool((share_hi >= 0.08).all()) and bool((share_lo <= 1.0).all())
    assert bool(((w + 0.5) / (h - 0.5) >= 3 / 4).all()) and bool(((w - 0.5) / (h + 0.5) <= 4 / 3).all())
    share = (h * w).double() / side**2
    assert 0.075 < float(share.min()) < 0.09 and float(share.max()) > 0.95  # whole pixels: a share may round below 0.08
    assert 0.45 < float(share.mean()) < 0.51  # 0.478: large shares at a non-square ratio do not fit, so are redrawn


def test_crop_window_fallback_is_the_central_crop():
    # scale > 1 makes all 10 attempts fail: square image -> whole image; 4 x 12 -> 4 x round(4 * 4/3) = 4 x 5 at left 3
    assert random_resized_crop_params(3, 10, 10, gen(), scale=(1.5, 2.0)).tolist() == [[0, 0, 10, 10]] * 3
    assert random_resized_crop_params(2, 4, 12, gen(), scale=(1.5, 2.0)).tolist() == [[0, 3, 4, 5]] * 2
    assert random_resized_crop_params(1, 12, 4, gen(), scale=(1.5, 2.0)).tolist() == [[3, 0, 5, 4]]


def test_random_resized_crop_is_deterministic_and_draws_once_per_batch():
    x = images(16, size=24).float() / 255
    a, b = random_resized_crop(x, 24, gen(4)), random_resized_crop(x, 24, gen(4))
    assert torch.equal(a, b) and a.shape == (16, 3, 24, 24)
    assert not torch.equal(a, random_resized_crop(x, 24, gen(5)))
    g, h = gen(4), gen(4)
    random_resized_crop(x, 24, g), torch.rand(16, 22, generator=h)
    assert torch.equal(g.get_state(), h.get_state())
    assert random_resized_crop(x, 10, gen(4)).shape == (16, 3, 10, 10)


def test_imagenet_view_is_resized_crop_then_flip_then_normalise():
    data = compose(["+experiment=imagenet_subset", "dataset.image_size=16", "model.img_size=16", "model.patch_size=4"])
    spec = spec_from_dataset(parse_params(data).dataset)
    assert (spec.resized_crop, spec.crop_padding, spec.hflip, spec.jitter) == (16, 0, True, False)
    x = images(24, size=16)
    out = augment_batch(x, spec, gen(8))
    g = gen(8)
    windows = random_resized_crop_params(24, 16, 16, g)
    flip = torch.rand(24, generator=g) < 0.5
    view = resized_crop(x.float() / 255, windows, 16)
    view = torch.where(flip.view(-1, 1, 1, 1), view.flip(3), view)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    assert torch.allclose(out, (view - mean) / std, atol=1e-6) and out.dtype == torch.float32
    assert torch.equal(augment_batch(x, spec, gen(8)), out) and 6 < int(flip.sum()) < 18
    for config in ([], ["+experiment=cifar100"]):  # digits and CIFAR keep the padded crop
        assert spec_from_dataset(parse_params(compose(config)).dataset).resized_crop == 0


# --- colour --------------------------------------------------------------------------------------

def test_brightness_of_a_constant_image():
    x = torch.full((3, 3, 2, 2), 0.4)
    out = adjust_brightness(x, torch.tensor([1.5, 0.5, 3.0]))
    assert torch.allclose(out[0], torch.tensor(0.6)) and torch.allclose(out[1], torch.tensor(0.2))
    assert torch.equal(out[2], torch.ones(3, 2, 2))  # clamped


def test_contrast_and_saturation_hand_checked():
    x = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2).repeat(1, 3, 1, 1)  # grey pixels 0.2 and 0.6: mean 0.4
    assert torch.allclose(adjust_contrast(x, torch.tensor([0.5]))[0, :, 0], torch.tensor([[0.3, 0.5]] * 3))
    assert torch.allclose(adjust_contrast(torch.full((1, 3, 2, 2), 0.7), torch.tensor([1.8])), torch.tensor(0.7))
    rgb = torch.tensor([0.5, 0.2, 0.1]).view(1, 3, 1, 1)
    grey = 0.299 * 0.5 + 0.587 * 0.2 + 0.114 * 0.1  # 0.2783
    assert torch.allclose(adjust_saturation(rgb, torch.tensor([0.0])).flatten(), torch.tensor([grey] * 3))
    assert torch.allclose(adjust_saturation(rgb, torch.tensor([2.0])).flatten(),
                          torch.tensor([2 * 0.5 - grey, 2 * 0.2 - grey, 0.0]))  # blue clamped at 0


def test_hue_rotates_primaries_and_matches_torchvision():
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).repeat(3, 1, 1, 1)
    out = adjust_hue(red, torch.tensor([1 / 3, 0.5, -1 / 3])).view(3, 3)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]), atol=1e-6)
    x = images(16, size=8).float() / 255
    shifts = torch.linspace(-0.5, 0.5, 16)
    expected = torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(16)])
    assert torch.allclose(adjust_hue(x, shifts), expected, atol=1e-5)


@pytest.mark.parametrize("op, tv, low, high", [
    ("brightness", TF.adjust_brightness, 0.6, 1.4),
    ("contrast", TF.adjust_contrast, 0.6, 1.4),
    ("saturation", TF.adjust_saturation, 0.6, 1.4),
    ("hue", TF.adjust_hue, -0.4, 0.4),
])
def test_single_jitter_matches_torchvision_with_the_drawn_factor(op, tv, low, high):
    x = images(32, size=8).float() / 255
    out = color_jitter(x, gen(11), **{op: 0.4})
    factors = low + (high - low) * torch.rand(32, generator=gen(11))
    expected = torch.stack([tv(x[i], float(factors[i])) for i in range(32)])
    # grey levels use PIL's luma 0.299 (torchvision's tensor ops use 0.2989): differences stay below 1e-4
    assert torch.allclose(out, expected, atol=1e-4)
    assert not torch.allclose(out, x, atol=1e-3)


def test_jitter_applies_each_image_its_own_order():
    x = images(200, size=4).float() / 255
    out = color_jitter(x, gen(2), brightness=0.5, contrast=0.5)
    g = gen(2)
    order = torch.rand(200, 2, generator=g).argsort(1)
    b = 0.5 + torch.rand(200, generator=g)
    c = 0.5 + torch.rand(200, generator=g)
    b_first = adjust_contrast(adjust_brightness(x, b), c)
    c_first = adjust_brightness(adjust_contrast(x, c), b)
    picks_b_first = order[:, 0] == 0
    assert torch.allclose(out[picks_b_first], b_first[picks_b_first], atol=1e-6)
    assert torch.allclose(out[~picks_b_first], c_first[~picks_b_first], atol=1e-6)
    assert 60 < int(picks_b_first.sum()) < 140
    assert not torch.allclose(b_first, c_first, atol=1e-3)  # the order matters, so the test can fail


# --- the whole view ------------------------------------------------------------------------------

def test_augment_is_deterministic_under_a_fixed_generator():
    x = images(32)
    a, b = augment_batch(x, CIFAR, gen(4)), augment_batch(x, CIFAR, gen(4))
    assert torch.equal(a, b) and a.shape == (32, 3, 32, 32) and a.dtype == torch.float32
    assert not torch.equal(a, augment_batch(x, CIFAR, gen(5)))


def test_uint8_and_float_input_give_the_same_view():
    x = images(32)
    from_uint8 = augment_batch(x, CIFAR, gen(9))
    from_float = augment_batch(x.float() / 255, CIFAR, gen(9))
    assert torch.equal(from_uint8, from_float)


def test_cifar_view_matches_a_per_image_reference():
    """Crop (black padding) -> flip -> brightness -> normalise, rebuilt per image from the drawn values."""
    x = images(16)
    out = augment_batch(x, CIFAR, gen(6))
    g = gen(6)
    dy, dx = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    b = 63 / 255
    factor = (1 - b) + 2 * b * torch.rand(16, generator=g)
    mean, std = torch.tensor(CIFAR.mean).view(3, 1, 1), torch.tensor(CIFAR.std).view(3, 1, 1)
    for i in range(16):
        img = F.pad(x[i].float() / 255, (4, 4, 4, 4))[:, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        img = img.flip(2) if flip[i] else img
        img = (img * factor[i]).clamp(0, 1)
        assert torch.allclose(out[i], (img - mean) / std, atol=1e-6)


# --- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("section, key, value, message", [
    ("dataset", "crop_fill", "white", r"dataset.crop_fill: expected one of \['black', 'mean'\]"),
    ("dataset", "jitter_brightness", -0.1, r"dataset.jitter_brightness: expected a strength >= 0"),
    ("dataset", "jitter_hue", 0.6, r"dataset.jitter_hue: expected at most 0.5"),
    ("dataset", "jitter_saturation", 0.4, r"dataset.jitter_saturation: needs RGB images"),
    ("runtime", "compile", "yes", r"runtime.compile: expected false, true or graphs"),
    ("dataset", "random_resized_crop", "yes", r"dataset.random_resized_crop: expected true or false"),
])
def test_augmentation_and_compile_config_errors_name_the_key(section, key, value, message):
    data = copy.deepcopy(compose([]))
    data[section][key] = value
    with pytest.raises(ConfigError, match=message):
        parse_params(data)


def test_compile_flag_is_plumbed(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(type(self).__name__))
    net = torch.nn.Linear(2, 2)
    assert runtime.maybe_compile(net, False) is net and calls == []
    assert runtime.maybe_compile(net, True) is net and calls == ["Linear"]
    assert parse_params(compose(["runtime.compile=true"])).runtime.compile is True
    assert parse_params(compose([])).runtime.compile is False


# --- the augmentation benchmark (speed itself: `python -m ncil bench-data`, never asserted here) ---------

def test_bench_augment_reports_both_rates_and_their_ratio():
    """The report's arithmetic on a tiny round (the batched path measured about 25x when first written)."""
    from ncil.learning.step_timing import bench_augment

    r = bench_augment(batch_size=8, batched_images=16, pil_images=8, rounds=2, threads=1)
    assert r["ratio"] == pytest.approx(r["batched_images_per_s"] / r["pil_images_per_s"])
    assert r["batched_images_per_s"] >= r["batched_median_images_per_s"] > 0  # the fastest of the rounds
    assert r["pil_images_per_s"] >= r["pil_median_images_per_s"] > 0
    assert (r["batch_size"], r["threads"], r["rounds"]) == (8, 1, 2)


def test_bench_data_cli_reports_both_rates_and_the_ratio(capsys):
    from ncil.cli import main

    assert main(["bench-data", "--images", "64", "--pil-images", "16", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "batched (ncil.data.augment)" in out and "per image (torchvision v1 + PIL)" in out
    assert float(out.rsplit("ratio ", 1)[1].rstrip().rstrip("x")) > 0  # a number; its size is not a test


def test_train_task_compiles_the_backbone_only_when_asked(monkeypatch):
    """runtime.compile reaches train_task (compiling itself is slow on the CPU, so it is stubbed)."""
    import logging

    from ncil.learning import training

    calls = []
    monkeypatch.setattr(runtime, "maybe_compile",
                        lambda module, enabled, example=None: calls.append((type(module).__name__, enabled)))
    rng = np.random.RandomState(0)
    split = arrays.Split(rng.randint(0, 256, (40, 8, 8, 1)).astype(np.uint8), np.repeat(np.arange(4), 10))
    for flag in (False, True):
        p = parse_params(compose(["model=vit_digits_tiny", "train=smoke", "method=[finetune]",
                                  f"runtime.compile={str(flag).lower()}", "runtime.device=cpu"]))
        job = training.TaskJob(task=0, seed=1, class_order=list(range(10)), tasks=[[0, 1, 2, 3]], method_name="plain",
                               method=p.method["finetune"], identity={})
        payload, _ = training.train_task(p, job, split, None, None, logging.getLogger("test"))
        assert payload["task"] == 0
    assert [enabled for _, enabled in calls] == [False, True] and calls[0][0] != "IncrementalNet"
