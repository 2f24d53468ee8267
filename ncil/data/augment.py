"""Batched, seeded image augmentation on tensors (method-spec 2.1), on any device.

Every function takes a batch ``x`` of shape (B, C, H, W) and a ``torch.Generator`` and returns the
augmented batch; each random parameter is drawn for the whole batch in one call (one value per
image), so a batch costs a handful of tensor operations however large it is, and the same generator
state gives the same result. Nothing here touches PIL or loops over images.

The transforms follow torchvision's definitions, in torchvision's order for CIFAR-100
(RandomCrop(32, padding=4) -> RandomHorizontalFlip -> ColorJitter(brightness=63/255) -> ToTensor ->
Normalize):

* ``random_crop`` and ``random_hflip`` only move pixels, so they accept uint8 or float input and give
  the same pixels either way;
* ``random_resized_crop`` (ImageNet-Subset: RandomResizedCrop(224) -> RandomHorizontalFlip) resamples,
  so it works on float pixels;
* the colour operations (``color_jitter``) work on float pixels in [0, 1], as torchvision's tensor
  functional ops do (``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``);
* ``normalize`` is last.

The rotation self-supervision (PASS, method-spec 2.3) is batched as well, in
``ncil.methods.baseline.rotate_batch``; it runs on the normalised views inside the training step.

``augment_batch`` chains them as configured by an ``AugmentSpec`` (built from the data set's config).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CROP_FILLS = ("black", "mean")


@dataclass(frozen=True)
class AugmentSpec:
    """The training-time augmentation of one data set (the ``dataset`` section of the config)."""

    mean: tuple[float, ...]  # per-channel normalisation mean (pixels in [0, 1])
    std: tuple[float, ...]  # per-channel normalisation std
    crop_padding: int = 0  # RandomCrop padding in pixels (0 = no crop)
    crop_fill: str = "black"  # padding value: black (torchvision's fill=0) or mean (0 after normalisation)
    hflip: bool = False  # RandomHorizontalFlip(0.5)
    brightness: float = 0.0  # ColorJitter strengths (torchvision semantics; 0 = off)
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    resized_crop: int = 0  # RandomResizedCrop output side in pixels, instead of the padded crop (0 = off)

    @property
    def jitter(self) -> bool:
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue))


def spec_from_dataset(dataset) -> AugmentSpec:
    """The ``AugmentSpec`` of a ``DatasetConfig``."""
    return AugmentSpec(
        mean=tuple(dataset.mean), std=tuple(dataset.std), crop_padding=dataset.crop_padding,
        crop_fill=dataset.crop_fill, hflip=dataset.hflip, brightness=dataset.jitter_brightness,
        contrast=dataset.jitter_contrast, saturation=dataset.jitter_saturation, hue=dataset.jitter_hue,
        resized_crop=dataset.image_size if dataset.random_resized_crop else 0,
    )


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (the division ToTensor does); float input is returned as is."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


@functools.lru_cache(maxsize=64)
def _channel_constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, C, 1, 1) constant, made once per device: a host-to-GPU copy every batch would stall the GPU."""
    return torch.tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel, for float pixels in [0, 1] of shape (B, C, H, W)."""
    mean_t = _channel_constant(tuple(float(v) for v in mean), x.dtype, x.device)
    std_t = _channel_constant(tuple(float(v) for v in std), x.dtype, x.device)
    return (x - mean_t) / std_t


def pad(x: torch.Tensor, padding: int, fill=0) -> torch.Tensor:
    """Pad (B, C, H, W) by ``padding`` on every side with ``fill`` (a number or one value per channel)."""
    values = [float(v) for v in torch.as_tensor(fill, dtype=torch.float64).reshape(-1)]
    if len(set(values)) == 1:
        return F.pad(x, (padding,) * 4, value=values[0])  # (B, C, H+2p, W+2p)
    n, c, h, w = x.shape
    fill_t = _channel_constant(tuple(values), x.dtype, x.device)  # (1, C, 1, 1)
    out = fill_t.expand(n, c, h + 2 * padding, w + 2 * padding).clone()  # (B, C, H+2p, W+2p)
    out[:, :, padding : padding + h, padding : padding + w] = x
    return out


def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator, fill=0,
                     flip_p: float = 0.0) -> torch.Tensor:
    """RandomCrop(size=(H, W), padding) followed by RandomHorizontalFlip(flip_p), as one gather.

    The crop pads every side by ``padding`` with ``fill`` (a number or one value per channel, in the
    units of ``x``) and keeps the H x W window at a random offset; the flip then mirrors the window.
    Draws, in this order (each one call of B values): row offsets ``dy`` and column offsets ``dx``,
    uniform in [0, 2 * padding] (only if padding > 0), then ``rand`` < flip_p (only if flip_p > 0),
    the same draws and pixels as ``random_crop`` followed by ``random_hflip``.
    """
    n, c, h, w = x.shape
    if padding == 0 and flip_p <= 0:
        return x
    device = x.device
    src = pad(x, padding, fill) if padding else x  # (B, C, Hp, Wp)
    hp, wp = src.shape[2:]
    if padding:
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    else:
        dy = dx = torch.zeros(n, dtype=torch.int64, device=device)
    j = torch.arange(w, device=device)
    cols = dx.view(n, 1) + j  # (B, W) source column of each output column
    if flip_p > 0:
        flip = torch.rand(n, generator=generator, device=device) < flip_p
        cols = torch.where(flip.view(n, 1), dx.view(n, 1) + (w - 1 - j), cols)
    rows = dy.view(n, 1) + torch.arange(h, device=device)  # (B, H)
    index = (rows.view(n, h, 1) * wp + cols.view(n, 1, w)).view(n, 1, h * w)  # (B, 1, H*W) into Hp*Wp
    return src.reshape(n, c, hp * wp).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator, fill=0) -> torch.Tensor:
    """RandomCrop(size=(H, W), padding): pad every side with ``fill``, keep the window at a random offset.

    Draws ``dy`` then ``dx``, each uniform in [0, 2 * padding], one ``randint`` call of B values each.
    """
    return random_crop_flip(x, padding, generator, fill=fill)


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """RandomHorizontalFlip(p): mirror each image along W with probability ``p`` (one ``rand`` of B values)."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


RRC_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults
RRC_RATIO = (3 / 4, 4 / 3)
RRC_ATTEMPTS = 10


def _central_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's window when all attempts fail: the whole image, or its centre at the nearest ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_params(n: int, height: int, width: int, generator: torch.Generator, device=None,
                               scale: tuple[float, float] = RRC_SCALE,
                               ratio: tuple[float, float] = RRC_RATIO) -> torch.Tensor:
    """Crop windows (n, 4) of int64 (top, left, height, width): ``RandomResizedCrop.get_params`` per image.

    torchvision's rule, for every image at once: up to 10 attempts, each drawing an area share
    s ~ U(scale) and a log aspect ratio ~ U(log ratio), giving w = round(sqrt(s A r)), h = round(sqrt(s A / r))
    (A = height x width, round half to even as Python's ``round``); the first attempt with
    0 < w <= width and 0 < h <= height wins and its offsets are uniform over the valid positions.
    When all 10 fail the window is the central crop of ``_central_fallback``.
    All draws are one ``rand`` call of (n, 22) values: columns 0-9 the area shares, 10-19 the log
    ratios, 20 and 21 the top and left offsets (drawn for every image, used when an attempt succeeds).
    The geometry is computed in float64 (torchvision's Python floats).
    """
    device = device if device is not None else generator.device
    u = torch.rand(n, 2 * RRC_ATTEMPTS + 2, generator=generator, device=device).double()  # (n, 22)
    area = float(height * width)
    log_lo, log_hi = torch.tensor(ratio, dtype=torch.float64).log().tolist()
    share = scale[0] + (scale[1] - scale[0]) * u[:, :RRC_ATTEMPTS]  # (n, 10)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, RRC_ATTEMPTS : 2 * RRC_ATTEMPTS])  # (n, 10)
    w = torch.round(torch.sqrt(area * share * aspect)).long()  # (n, 10)
    h = torch.round(torch.sqrt(area * share / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (n, 10)
    first = ok.long().argmax(1, keepdim=True)  # (n, 1): first successful attempt (0 when none)
    found = ok.any(1)  # (n,)
    fb_top, fb_left, fb_h, fb_w = _central_fallback(height, width, ratio)
    h = torch.where(found, h.gather(1, first).squeeze(1), fb_h)  # (n,)
    w = torch.where(found, w.gather(1, first).squeeze(1), fb_w)
    # randint(0, height - h + 1) as floor(u * count); u < 1 keeps it below the count
    top = torch.where(found, (u[:, -2] * (height - h + 1)).floor().long(), fb_top)
    left = torch.where(found, (u[:, -1] * (width - w + 1)).floor().long(), fb_left)
    return torch.stack([top, left, h, w], 1)  # (n, 4)


def _bilinear_taps(start: torch.Tensor, length: torch.Tensor, size: int, dtype) -> tuple[torch.Tensor, ...]:
    """Source indices and weights of ``size`` output pixels resampling the windows [start, start + length).

    Half-pixel centres as ``F.interpolate(mode="bilinear", align_corners=False)`` on the cropped
    window: output pixel k reads window position (k + 0.5) * length / size - 0.5, clamped to
    [0, length - 1] (so the window's edge pixels are repeated, never its neighbours outside).
    Returns (low index, high index, weight of high) each (n, size); indices are into the full image.
    """
    k = torch.arange(size, device=start.device, dtype=torch.float64)
    pos = (k + 0.5) * (length.double().view(-1, 1) / size) - 0.5  # (n, size) window coordinates
    pos = torch.minimum(pos.clamp(min=0.0), (length - 1).double().view(-1, 1))
    low = pos.floor()
    frac = (pos - low).to(dtype)
    low = low.long()
    high = torch.minimum(low + 1, (length - 1).view(-1, 1))
    return start.view(-1, 1) + low, start.view(-1, 1) + high, frac


def resized_crop(x: torch.Tensor, windows: torch.Tensor, size: int) -> torch.Tensor:
    """Crop window i of image i and resize it bilinearly to size x size: float (B, C, H, W) -> (B, C, S, S).

    ``windows`` (B, 4) holds (top, left, height, width) per image. The result equals cropping each
    image and calling ``F.interpolate(..., (size, size), mode="bilinear", align_corners=False)`` on the
    crop (torchvision's ``resized_crop`` on float tensors; its antialiasing only acts when a side
    shrinks, never for windows inside a stored image of the output size). Batched as two separable
    passes: rows (two gathers and a blend), then columns.
    """
    n, c, height, width = x.shape
    top, left, h, w = windows.to(x.device).unbind(1)
    r0, r1, fr = _bilinear_taps(top, h, size, x.dtype)  # (B, S) each
    c0, c1, fc = _bilinear_taps(left, w, size, x.dtype)

    def rows(index):  # (B, S) row indices -> (B, C, S, W)
        return x.gather(2, index.view(n, 1, size, 1).expand(n, c, size, width))

    fr = fr.view(n, 1, size, 1)
    y = rows(r0) * (1.0 - fr) + rows(r1) * fr  # (B, C, S, W)

    def cols(index):  # (B, S) column indices -> (B, C, S, S)
        return y.gather(3, index.view(n, 1, 1, size).expand(n, c, size, size))

    fc = fc.view(n, 1, 1, size)
    return cols(c0) * (1.0 - fc) + cols(c1) * fc


def random_resized_crop(x: torch.Tensor, size: int, generator: torch.Generator,
                        scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO) -> torch.Tensor:
    """RandomResizedCrop(size, scale, ratio) with bilinear resizing on float (B, C, H, W) -> (B, C, S, S).

    ImageNet-Subset's training crop (method-spec 2.1; the flip follows in ``augment_batch``). One window
    per image from ``random_resized_crop_params`` (one ``rand`` call), then ``resized_crop``. Differences
    from torchvision's PIL path, which the released code used: no rounding back to uint8 between crop and
    ToTensor, and bilinear taps without PIL's widened filter when a side shrinks (the stored images are
    already image_size, so at the default sizes every window is enlarged or kept, never shrunk).
    """
    windows = random_resized_crop_params(x.shape[0], x.shape[2], x.shape[3], generator, x.device, scale, ratio)
    return resized_crop(x, windows, size)


def _uniform(low: float, high: float, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """n values uniform in [low, high): one ``rand`` call."""
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def jitter_range(op: int, strength: float) -> tuple[float, float]:
    """torchvision's ColorJitter range: [max(0, 1 - s), 1 + s] for brightness, contrast, saturation
    (op 0, 1, 2) and [-s, s] for the hue shift (op 3)."""
    return (-strength, strength) if op == 3 else (max(0.0, 1.0 - strength), 1.0 + strength)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (B, 1, H, W) of RGB float images (B, 3, H, W); grey input is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(factor * x + (1 - factor) * other, 0, 1) with one factor per image (torchvision's _blend)."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: clamp(factor * x, 0, 1), factor (B,)."""
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with each image's mean grey level, factor (B,)."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with each image's grey version, factor (B,); grey images are unchanged."""
    if x.shape[1] == 1:
        return x
    return _blend(x, grayscale(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB (B, 3, H, W) in [0, 1] -> hue in sextants [0, 6), saturation, value, each (B, H, W).

    The hue is torchvision's ``_rgb2hsv`` hue times 6 (red 0, yellow 1, green 2, ..., magenta 5).
    Per-pixel choices are masks multiplied in, as torchvision does: ``torch.where`` with a condition
    that changes from pixel to pixel is many times slower on the CPU (branch misprediction).
    """
    r, g, b = x.unbind(1)
    value, low = x.amax(1), x.amin(1)  # (B, H, W)
    chroma = value - low
    grey = (chroma == 0).to(x.dtype)  # 1 where r = g = b
    saturation = chroma / (value + grey)  # 0 for grey pixels (value 0 included)
    d = chroma + grey
    is_r = (value == r).to(x.dtype)
    is_g = (value == g).to(x.dtype) * (1.0 - is_r)
    is_b = 1.0 - is_r - is_g
    hue = is_r * ((g - b) / d) + is_g * (2.0 + (b - r) / d) + is_b * (4.0 + (r - g) / d)  # in [-1, 5]
    return _wrap6(hue), saturation, value


def _wrap6(h: torch.Tensor) -> torch.Tensor:
    """h mod 6 for h in [-6, 12) (mask arithmetic, exact)."""
    return h + 6.0 * (h < 0).to(h.dtype) - 6.0 * (h >= 6.0).to(h.dtype)


def hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Hue in sextants [0, 6), saturation, value (B, H, W) -> RGB (B, 3, H, W).

    Channel n of (R, G, B) is v - v s clamp(min(k, 4 - k), 0, 1) with k = (5, 3, 1)[n] + hue mod 6,
    the closed form of torchvision's six-sector ``_hsv2rgb``.
    """
    offsets = _channel_constant((5.0, 3.0, 1.0), hue.dtype, hue.device)  # (1, 3, 1, 1)
    k = _wrap6(offsets + hue.unsqueeze(1))  # (B, 3, H, W)
    v = value.unsqueeze(1)
    return v - v * saturation.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image by ``shift`` (B,) turns, in [-0.5, 0.5]; grey images are unchanged."""
    if x.shape[1] == 1:
        return x
    hue, saturation, value = rgb_to_hsv(x)
    hue = _wrap6(hue + 6.0 * shift.view(-1, 1, 1))  # (B, H, W)
    return hsv_to_rgb(hue, saturation, value)


_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: torch.Tensor, generator: torch.Generator, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, hue: float = 0.0, *, static: bool = False) -> torch.Tensor:
    """ColorJitter(brightness, contrast, saturation, hue) on float pixels (B, C, H, W) in [0, 1].

    As in torchvision, each image gets its own factors (brightness, contrast and saturation uniform in
    [max(0, 1 - s), 1 + s], hue shift uniform in [-hue, hue]) and applies the active operations in its
    own random order. Draws, in this order: one ``rand`` of (B, n_active) for the order (only when
    more than one operation is active), then one ``rand`` of B values per active operation.
    The per-image order is realised position by position: the images are grouped by the operation
    they apply at that position (a stable sort), each operation runs once on its group, and the
    images go back to their places, so the work is one pass of each operation over the batch.
    The group sizes are read back to the host once per batch (one synchronisation on a GPU).
    ``static=True`` (``runtime.static_shapes``, issue 21): the same draws; at each position every active
    operation runs on the whole batch and each image keeps its own operation's result
    (``torch.where(order[:, p] == slot, op(x), x)``): n_active times the work, no group size read back,
    the same shapes every batch. Every operation works image by image, so each image gets the same values.
    """
    strengths = (brightness, contrast, saturation, hue)
    active = [k for k, s in enumerate(strengths) if s > 0]
    if not active:
        return x
    n = x.shape[0]
    order = None
    if len(active) > 1:
        order = torch.rand(n, len(active), generator=generator, device=x.device).argsort(1)  # (B, n_active)
    factors = {k: _uniform(*jitter_range(k, strengths[k]), n, generator, x.device) for k in active}  # each (B,)
    if order is None:
        (k,) = active
        return _OPS[k](x, factors[k])
    if static:
        for position in range(len(active)):
            chosen = order[:, position].view(-1, 1, 1, 1)  # (B, 1, 1, 1) slot applied at this position
            out = x
            for slot, k in enumerate(active):
                out = torch.where(chosen == slot, _OPS[k](x, factors[k]), out)
            x = out
        return x
    # counts[p][slot]: images applying operation active[slot] at position p
    counts = torch.nn.functional.one_hot(order, len(active)).sum(0).tolist()  # (n_active, n_active)
    for position in range(len(active)):
        group = torch.sort(order[:, position], stable=True).indices  # (B,) images grouped by operation
        xs = x.index_select(0, group)
        parts, start = [], 0
        for slot, k in enumerate(active):
            size = counts[position][slot]
            if size:
                rows = group[start : start + size]
                parts.append(_OPS[k](xs[start : start + size], factors[k].index_select(0, rows)))
            start += size
        x = torch.empty_like(x).index_copy_(0, group, torch.cat(parts))  # back in batch order
    return x


def augment_batch(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator, *, static: bool = False) -> torch.Tensor:
    """The training view of a batch (B, C, H, W), uint8 or float pixels in [0, 1] -> normalised float32.

    Crop (padding filled with black or with the normalisation mean) -> horizontal flip -> colour
    jitter -> normalise, drawing from ``generator`` in that order. With black fill and uint8 input the
    crop and flip move uint8 pixels (4x less memory traffic) before the conversion to float; crop and
    flip share one gather (``random_crop_flip``).
    With ``spec.resized_crop`` (ImageNet-Subset, method-spec 2.1) the padded crop is replaced by
    RandomResizedCrop(resized_crop) on float pixels, then the flip: (B, C, S, S). ``static``: the colour
    jitter's static form (``color_jitter``; ``runtime.static_shapes``).
    """
    if spec.resized_crop:
        x = random_resized_crop(to_unit(x), spec.resized_crop, generator)  # (B, C, S, S) float in [0, 1]
        if spec.hflip:
            x = random_hflip(x, generator)
    else:
        if spec.crop_fill == "mean" or x.dtype != torch.uint8:
            x = to_unit(x)
        fill = spec.mean if spec.crop_fill == "mean" else 0
        x = random_crop_flip(x, spec.crop_padding, generator, fill=fill, flip_p=0.5 if spec.hflip else 0.0)
        x = to_unit(x)  # (B, C, H, W) float in [0, 1]
    if spec.jitter:
        x = color_jitter(x, generator, spec.brightness, spec.contrast, spec.saturation, spec.hue, static=static)
    return normalize(x, spec.mean, spec.std)


# --- The official preset's extra strong view (method-spec 2.2), the contrastive loss's key --------------

STRONG_SCALE = (0.2, 1.0)  # RandomResizedCrop scale of the strong view
STRONG_GRAYSCALE_P = 0.2  # RandomGrayscale probability
STRONG_JITTER = 0.4  # ColorJitter(0.4, 0.4, 0.4, 0.4)
STRONG_FLIP_P = 0.5  # RandomHorizontalFlip


def random_grayscale(x: torch.Tensor, generator: torch.Generator, p: float = STRONG_GRAYSCALE_P) -> torch.Tensor:
    """RandomGrayscale(p) on float (B, C, H, W): each image becomes its luma, repeated over the C channels,
    with probability ``p`` (one ``rand`` of B values). Grey images (C = 1) are unchanged but still draw."""
    chosen = torch.rand(x.shape[0], generator=generator, device=x.device) < p  # (B,)
    if x.shape[1] == 1:
        return x
    return torch.where(chosen.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)


def strong_view(x: torch.Tensor, spec: AugmentSpec, size: int, generator: torch.Generator, *,
                static: bool = False) -> torch.Tensor:
    """The official preset's second training view (method-spec 2.2): uint8 or float (B, C, H, W) ->
    normalised float32 (B, C, size, size).

    RandomResizedCrop(size, scale=(0.2, 1.0)) -> RandomGrayscale(0.2) -> ColorJitter(0.4, 0.4, 0.4, 0.4)
    -> RandomHorizontalFlip(0.5) -> normalise with ``spec``'s constants, drawing from ``generator`` in
    that order: the crop windows (one ``rand`` of (B, 22)), the grayscale choice (B), the jitter's order
    and factors (``color_jitter``; on grey images saturation and hue change nothing but still draw), the
    flip (B). The released code runs this pipeline twice and keeps the second result; that only spends
    random numbers and is skipped here. ``augment_batch`` is independent of this function: a step that
    calls both draws ``augment_batch``'s numbers first. ``static``: the colour jitter's static form
    (``color_jitter``; ``runtime.static_shapes``).
    """
    x = random_resized_crop(to_unit(x), size, generator, scale=STRONG_SCALE)  # (B, C, S, S) float in [0, 1]
    x = random_grayscale(x, generator)
    x = color_jitter(x, generator, STRONG_JITTER, STRONG_JITTER, STRONG_JITTER, STRONG_JITTER, static=static)
    x = random_hflip(x, generator, STRONG_FLIP_P)
    return normalize(x, spec.mean, spec.std)
