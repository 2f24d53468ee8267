"""Column layout of the `official` preset's classifier head (method-spec 2.3-2.5, 3.4).

The head of task t has ``rot * K_tot + C_t (C_t - 1) / 2`` outputs, K_tot = K_old + C_t:

* real columns 0 .. rot*K_tot - 1, class-major then rotation: class c, rotation k sits at column rot*c + k
  (2.3, 2.5);
* then, with mixup, one virtual column per unordered pair of the current task's classes (2.4), the pair
  of local indices a > b (local = global label - K_old) at ``rot*K_tot + a(a-1)/2 + b``.

Which columns each consumer reads:

* evaluation: the rotation-0 columns of all K_tot classes (``eval_columns``; spec 6.1, fixture 10.3);
* L_clf: every column (4.1);
* protoAug: the real columns only (``real_columns``; 4.5);
* PR's restoration CE: the rotation-0 columns of the old classes only (``old_rotation0_columns``; 4.7 [code]);
* head growth keeps rows 0 .. rot*K_old - 1 of the previous head; the previous task's mixup rows are
  discarded (``rows_kept_on_growth``; 3.4).

Column sets are ``range`` objects (cheap, exact, listable); ``take_columns`` slices a logits tensor by one
without a gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ncil.methods.baseline import N_ROTATIONS


@dataclass(frozen=True)
class HeadLayout:
    """Head columns of one task: ``n_old`` = K_old classes seen before, ``n_new`` = C_t classes of the task."""

    n_old: int
    n_new: int
    rotations: int = N_ROTATIONS
    mixup: bool = True

    def __post_init__(self) -> None:
        for name in ("n_old", "n_new", "rotations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"HeadLayout.{name} must be an int, got {value!r}")
        if self.n_old < 0:
            raise ValueError(f"HeadLayout.n_old must be >= 0, got {self.n_old!r}")
        if self.n_new < 1:
            raise ValueError(f"HeadLayout.n_new must be >= 1, got {self.n_new!r}")
        if self.rotations < 1:
            raise ValueError(f"HeadLayout.rotations must be >= 1, got {self.rotations!r}")

    # --- sizes -------------------------------------------------------------------------------------------
    @property
    def n_total(self) -> int:
        """K_tot = K_old + C_t."""
        return self.n_old + self.n_new

    @property
    def n_real(self) -> int:
        """rot * K_tot: the real (class x rotation) columns."""
        return self.rotations * self.n_total

    @property
    def n_mixup(self) -> int:
        """C_t (C_t - 1) / 2 virtual pair columns with mixup, else 0."""
        return self.n_new * (self.n_new - 1) // 2 if self.mixup else 0

    @property
    def n_outputs(self) -> int:
        """Head width: rot * K_tot + C_t (C_t - 1) / 2 (spec 2.5; 1425 for task 0 of 50+10x5)."""
        return self.n_real + self.n_mixup

    # --- column sets -------------------------------------------------------------------------------------
    def class_columns(self, c: int) -> range:
        """The rot columns of class c (global label, 0 <= c < K_tot): rot*c .. rot*c + rot - 1."""
        if not 0 <= c < self.n_total:
            raise ValueError(f"class must lie in [0, {self.n_total}), got {c!r}")
        return range(self.rotations * c, self.rotations * (c + 1))

    @property
    def eval_columns(self) -> range:
        """Rotation-0 columns of all K_tot classes, 0, rot, .., rot*(K_tot-1): what evaluation reads."""
        return range(0, self.n_real, self.rotations)

    @property
    def old_rotation0_columns(self) -> range:
        """Rotation-0 columns of the K_old old classes, 0, rot, .., rot*(K_old-1): PR's restoration CE (4.7)."""
        return range(0, self.rotations * self.n_old, self.rotations)

    @property
    def real_columns(self) -> range:
        """Columns 0 .. rot*K_tot - 1 (all classes, all rotations, no mixup): protoAug's logits (4.5)."""
        return range(0, self.n_real)

    @property
    def mixup_columns(self) -> range:
        """Columns rot*K_tot .. n_outputs - 1: the current task's virtual pair classes (empty without mixup)."""
        return range(self.n_real, self.n_outputs)

    @property
    def rows_kept_on_growth(self) -> range:
        """Rows 0 .. rot*K_old - 1 of the previous task's head, copied into this head at growth (3.4).

        They are the old real classes with all rotations; the previous task's mixup rows (which followed
        them) are discarded, and every other row of this head is fresh.
        """
        return range(0, self.rotations * self.n_old)

    def next(self, n_new: int) -> "HeadLayout":
        """The layout of the following task with ``n_new`` classes (this task's classes become old)."""
        return HeadLayout(self.n_total, n_new, self.rotations, self.mixup)

    # --- labels ------------------------------------------------------------------------------------------
    def virtual_label(self, a_global: int, b_global: int) -> int:
        """Column of the mixup class of two distinct current-task classes (spec 2.4 step 4), order-free.

        With local a = max - K_old > b = min - K_old: rot*K_tot + a(a-1)/2 + b. For K_old = 50, C_t = 10,
        the pair (59, 50) -> 240 + 36 + 0 = 276 (spec fixture 10.7).
        """
        if not self.mixup:
            raise ValueError("virtual_label needs a layout with mixup=True")
        for v in (a_global, b_global):
            if not self.n_old <= v < self.n_total:
                raise ValueError(f"mixup classes must be current-task labels in [{self.n_old}, {self.n_total}), got {v!r}")
        if a_global == b_global:
            raise ValueError(f"mixup needs two different classes, got {a_global!r} twice")
        a, b = max(a_global, b_global) - self.n_old, min(a_global, b_global) - self.n_old
        return self.n_real + a * (a - 1) // 2 + b

    def virtual_labels(self, y1: torch.Tensor, y2: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """Tensor form of ``virtual_label``: y1, y2 (M,) current-task labels, y1 != y2 row-wise -> (M,) int64.

        ``validate=False`` skips the value checks (they synchronise with the device); use it only where the
        caller has already checked the labels.
        """
        if y1.shape != y2.shape or y1.ndim != 1:
            raise ValueError(f"expected y1 and y2 of one shape (M,), got {tuple(y1.shape)} and {tuple(y2.shape)}")
        if not self.mixup:
            raise ValueError("virtual_labels needs a layout with mixup=True")
        if validate and y1.numel():
            lo, hi = int(torch.minimum(y1, y2).min()), int(torch.maximum(y1, y2).max())
            if lo < self.n_old or hi >= self.n_total:
                raise ValueError(f"mixup classes must be current-task labels in [{self.n_old}, {self.n_total}), got range [{lo}, {hi}]")
            if bool((y1 == y2).any()):
                raise ValueError("mixup pairs must have different labels row by row")
        a = torch.maximum(y1, y2).long() - self.n_old  # (M,)
        b = torch.minimum(y1, y2).long() - self.n_old  # (M,)
        return self.n_real + a * (a - 1) // 2 + b


def take_columns(logits: torch.Tensor, columns: range) -> torch.Tensor:
    """logits (R, n_outputs) -> (R, len(columns)) by basic slicing (a view, no gather)."""
    if logits.ndim != 2:
        raise ValueError(f"expected logits (R, n_outputs), got {tuple(logits.shape)}")
    if len(columns) and columns[-1] >= logits.shape[1]:
        raise ValueError(f"columns up to {columns[-1]} do not fit logits with {logits.shape[1]} columns")
    return logits[:, columns.start : columns.stop : columns.step]
