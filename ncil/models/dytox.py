"""DyTox's network (Douillard et al., CVPR 2022), as docs/dytox.md specifies it for Table 4.

One encoder shared by every task (the paper's ViT encoder: patch embedding, learned positional
embedding, ``cfg.depth`` ConViT GPSA blocks, the "SABs"), one task-attention block shared by every
task (the paper's ViT class-attention block, the "TAB"), and what grows with the tasks:

* one learned task token theta_i (1, 1, D) per task; e_i = TAB(patches, theta_i) is task i's embedding;
* one classifier per task, Clf_i = Linear(LayerNorm(e_i)) with |C_i| outputs, on its own embedding
  only (DyTox's "independent classifiers", released option ``ind_clf: 1-1``); the logits of all seen
  classes are the concatenation [Clf_1(e_1), ..., Clf_t(e_t)], in class order;
* from the second task on, a divergence head Clf_div = Linear(LayerNorm(e_t)) with |C_t| + 1 outputs
  on the newest embedding: "one of the old classes" plus each new class. It is replaced at every
  expansion and only trained (released option ``head_div_mode: tr``), never used to predict.

There is no final LayerNorm after the TAB (each classifier has its own). The GPSA blocks, the TAB
and the first token are built by ``ncil.models.vit.ViT`` (same timm parts, same initialisation), so
the two models share their arithmetic: ``DyToxNet.encode`` is ``ViT.encode``.

Freezing (released ``freeze_task: [old_task_tokens, old_heads]`` and ``freeze_ft: [sab]``): see
``apply_phase``. Parameter counts: ``parameter_count`` is the closed form that tests check against
the module.
"""

from __future__ import annotations

import torch
from torch import nn

from ncil.models.vit import ViT, import_timm_blocks
from ncil.pipeline.config import ModelConfig

TOKEN_INIT_STD = 0.02  # trunc-normal std of a new task token (the released code re-draws the copy it makes)
PHASES = ("base", "task", "finetune")


class TaskClassifier(nn.Module):
    """Linear(LayerNorm(e)): DyTox's per-task classifier (and its divergence head).

    LayerNorm starts at (1, 0); the linear layer keeps PyTorch's default initialisation, as the
    released classifier does (it applies no init of its own).
    """

    def __init__(self, dim: int, n_outputs: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, n_outputs)

    @property
    def n_outputs(self) -> int:
        return self.linear.out_features

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(embedding))  # (B, D) -> (B, n_outputs)


class DyToxNet(nn.Module):
    """DyTox for ``n_first_classes`` classes; ``expand`` adds a task. See the module docstring."""

    encode = ViT.encode  # x (B, C, H, W) -> patch tokens after the SABs (B, N, D): the ViT's encoder arithmetic

    def __init__(self, cfg: ModelConfig, in_chans: int, n_first_classes: int, divergence: bool = True):
        super().__init__()
        if n_first_classes < 1:
            raise ValueError(f"n_first_classes: expected at least 1 class, got {n_first_classes}")
        vit = ViT(cfg, in_chans)  # its init: trunc-normal(0.02) tokens and linears, GPSA locality init
        self.embed_dim = vit.embed_dim
        self.num_patches = vit.num_patches
        self.patch_embed, self.pos_embed, self.blocks = vit.patch_embed, vit.pos_embed, vit.blocks  # the SABs
        self.tab = vit.class_attn  # the TAB: updates only its task token (queries), keys/values [token; patches]
        self.task_tokens = nn.ParameterList([vit.cls_token])  # theta_1 is the ViT's [CLS] token
        self.heads = nn.ModuleList([TaskClassifier(self.embed_dim, n_first_classes)])
        self.use_divergence = divergence
        self.divergence: TaskClassifier | None = None  # no old classes in the first task

    @property
    def n_tasks(self) -> int:
        return len(self.task_tokens)

    @property
    def classes_per_task(self) -> list[int]:
        return [head.n_outputs for head in self.heads]

    @property
    def n_classes(self) -> int:
        return sum(self.classes_per_task)

    @property
    def feature_dim(self) -> int:
        return self.embed_dim

    @torch.no_grad()
    def expand(self, n_new_classes: int, generator: torch.Generator | None = None) -> None:
        """Add task t + 1: a new task token, a new classifier, a new divergence head (DyTox's expansion).

        The new token is drawn from trunc-normal(0, 0.02) on [-2, 2] (the released code copies the last
        token and re-draws it in place, so nothing of the old token survives). Old tokens and classifiers
        are kept as they are, bit for bit. ``generator`` (CPU) makes the new token's draw reproducible.
        """
        if n_new_classes < 1:
            raise ValueError(f"n_new_classes: expected at least 1 class, got {n_new_classes}")
        ref = self.task_tokens[-1]
        token = torch.empty(ref.shape, dtype=ref.dtype)
        if generator is None:
            import_timm_blocks()[2](token, std=TOKEN_INIT_STD)
        else:
            _trunc_normal(token, TOKEN_INIT_STD, generator)
        self.task_tokens.append(nn.Parameter(token.to(ref.device)))
        device = ref.device
        self.heads.append(TaskClassifier(self.embed_dim, n_new_classes).to(device=device, dtype=ref.dtype))
        if self.use_divergence:
            self.divergence = TaskClassifier(self.embed_dim, n_new_classes + 1).to(device=device, dtype=ref.dtype)

    def task_embeddings(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (B, N, D) -> (B, t, D): e_i = TAB(patches, theta_i) for every task token, one TAB pass each.

        The passes are independent: a task token attends over itself and the patches, never over another token.
        """
        batch = patches.shape[0]
        embeddings = [self.tab(patches, token.expand(batch, -1, -1)) for token in self.task_tokens]  # t x (B, 1, D)
        return torch.cat(embeddings, dim=1)  # (B, t, D)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """x (B, C, H, W) -> {"patches": (B, N, D), "embeddings": (B, t, D), "cls": e_t (B, D),
        "logits": (B, K_tot) in class order, "div_logits": (B, |C_t| + 1) or None}."""
        patches = self.encode(x)  # (B, N, D)
        embeddings = self.task_embeddings(patches)  # (B, t, D)
        logits = torch.cat([head(embeddings[:, i]) for i, head in enumerate(self.heads)], dim=1)  # (B, K_tot)
        last = embeddings[:, -1]  # (B, D): the newest task's embedding
        div_logits = self.divergence(last) if self.divergence is not None else None
        return {"patches": patches, "embeddings": embeddings, "cls": last, "logits": logits, "div_logits": div_logits}


def classes_per_task_of(state: dict[str, torch.Tensor]) -> list[int]:
    """The classes of each task of a ``DyToxNet`` state dict, read from its classifiers' shapes (pure)."""
    counts, i = [], 0
    while f"heads.{i}.linear.weight" in state:
        counts.append(int(state[f"heads.{i}.linear.weight"].shape[0]))
        i += 1
    if not counts:
        raise ValueError("not a DyTox state dict: no heads.0.linear.weight")
    return counts


def load_dytox(cfg: ModelConfig, in_chans: int, state: dict[str, torch.Tensor]) -> DyToxNet:
    """Rebuild a ``DyToxNet`` from a checkpoint's state dict: one task per classifier, the divergence head
    where the state has one. The structure is built with a throw-away generator for the tokens (the state
    overwrites every value); the classifiers' default initialisation draws from torch's global generator, as
    building any module does."""
    classes = classes_per_task_of(state)
    net = DyToxNet(cfg, in_chans, classes[0], divergence="divergence.linear.weight" in state)
    scratch = torch.Generator().manual_seed(0)
    for c in classes[1:]:
        net.expand(c, generator=scratch)
    net.load_state_dict(state)
    return net


def _trunc_normal(tensor: torch.Tensor, std: float, generator: torch.Generator) -> None:
    """In place: N(0, std^2) truncated to [-2, 2] (timm's absolute bounds), drawn by rejection from ``generator``."""
    flat = tensor.view(-1)
    filled = 0
    while filled < flat.numel():
        draw = torch.randn(flat.numel(), generator=generator, dtype=flat.dtype) * std
        keep = draw[(draw >= -2.0) & (draw <= 2.0)][: flat.numel() - filled]
        flat[filled: filled + keep.numel()] = keep
        filled += keep.numel()


def phase_trainable(phase: str, n_tasks: int) -> dict[str, list[bool] | bool]:
    """Which parameter groups train in ``phase`` (pure). Keys: encoder (patch embedding, positional
    embedding, SABs), tab, tokens (one bool per task), heads (one per task), divergence.

    * ``base`` (task 1): everything.
    * ``task`` (tasks t >= 2, released ``freeze_task: [old_task_tokens, old_heads]``): all but the
      old tokens and old classifiers.
    * ``finetune`` (balanced fine-tuning after tasks t >= 2, released ``freeze_ft: [sab]``): all but the
      encoder. The released ``freeze`` first unfreezes everything, so the old tokens and classifiers
      train again here; the divergence head is not used in fine-tuning (``head_div_mode: tr``) and
      is frozen so that no optimiser holds it.
    """
    if phase not in PHASES:
        raise ValueError(f"phase: expected one of {PHASES}, got {phase!r}")
    if n_tasks < 1:
        raise ValueError(f"n_tasks: expected at least 1, got {n_tasks}")
    newest_only = [i == n_tasks - 1 for i in range(n_tasks)]
    if phase == "base":
        return {"encoder": True, "tab": True, "tokens": [True] * n_tasks, "heads": [True] * n_tasks, "divergence": True}
    if phase == "task":
        return {"encoder": True, "tab": True, "tokens": newest_only, "heads": list(newest_only), "divergence": True}
    return {"encoder": False, "tab": True, "tokens": [True] * n_tasks, "heads": [True] * n_tasks, "divergence": False}


def apply_phase(net: DyToxNet, phase: str) -> None:
    """Set ``requires_grad`` of every parameter as ``phase_trainable`` says. Modes (train/eval) are left to
    the caller: the released code puts the whole model back in train mode every epoch, so frozen SABs keep
    their drop-path active during fine-tuning (``freeze_eval`` off)."""
    plan = phase_trainable(phase, net.n_tasks)
    for module in (net.patch_embed, net.blocks):
        module.requires_grad_(plan["encoder"])
    net.pos_embed.requires_grad_(plan["encoder"])
    net.tab.requires_grad_(plan["tab"])
    for token, trainable in zip(net.task_tokens, plan["tokens"]):
        token.requires_grad_(trainable)
    for head, trainable in zip(net.heads, plan["heads"]):
        head.requires_grad_(trainable)
    if net.divergence is not None:
        net.divergence.requires_grad_(plan["divergence"])


# Parameters AdamW leaves undecayed besides every 1-D one (docs/dytox.md 5): the positional embedding and the task
# tokens, learned embeddings as DeiT's and ConViT's no_weight_decay lists keep them (pos_embed, cls_token).
NO_DECAY_NAMES = ("pos_embed",)
NO_DECAY_PREFIXES = ("task_tokens.",)


def weight_decayed(name: str, parameter: torch.Tensor) -> bool:
    """Whether AdamW decays the DyToxNet parameter ``name`` (pure): not a bias, not a LayerNorm's weight or bias,
    not GPSA's gating (every parameter of at most one dimension), not the positional embedding, not a task token;
    yes for every weight matrix (patch embedding, attention, MLP, classifiers, divergence head)."""
    return not (parameter.ndim <= 1 or name.endswith(".bias") or name in NO_DECAY_NAMES
                or name.startswith(NO_DECAY_PREFIXES))


def block_parameter_count(dim: int, num_heads: int, mlp_ratio: float = 4.0, gpsa: bool = True) -> int:
    """Parameters of one block (pure): 2 LayerNorms (4D), q, k, v without bias (3D^2), output projection
    (D^2 + D), MLP (2 D H_mlp + H_mlp + D with H_mlp = mlp_ratio D); a GPSA block adds ConViT's positional
    projection Linear(3, heads) and one gate per head (5 heads). With D = 384, 12 heads: 1,773,372 (GPSA)
    and 1,773,312 (class attention), method-spec 3.3."""
    hidden = int(dim * mlp_ratio)
    count = 4 * dim + 3 * dim * dim + dim * dim + dim + 2 * dim * hidden + hidden + dim
    return count + (5 * num_heads if gpsa else 0)


def parameter_count(cfg: ModelConfig, in_chans: int, classes_per_task: list[int], divergence: bool = True) -> int:
    """DyToxNet's parameters after ``len(classes_per_task)`` tasks (pure, closed form):

    shared = patch embedding (C p^2 D + D) + positional embedding (N D) + depth GPSA blocks + the TAB;
    per task i: its token (D) and its classifier (2D LayerNorm + (D + 1)|C_i|);
    from the second task on, with ``divergence``: the divergence head (2D + (D + 1)(|C_t| + 1)).
    """
    d = cfg.embed_dim
    n_patches = (cfg.img_size // cfg.patch_size) ** 2
    shared = (in_chans * cfg.patch_size ** 2 * d + d) + n_patches * d
    shared += cfg.depth * block_parameter_count(d, cfg.num_heads, cfg.mlp_ratio, gpsa=True)
    shared += block_parameter_count(d, cfg.num_heads, cfg.mlp_ratio, gpsa=False)
    per_task = sum(d + 2 * d + (d + 1) * c for c in classes_per_task)
    div = 2 * d + (d + 1) * (classes_per_task[-1] + 1) if divergence and len(classes_per_task) > 1 else 0
    return shared + per_task + div
