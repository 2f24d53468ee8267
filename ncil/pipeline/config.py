"""Typed, frozen configuration: ``params.yaml`` validated once, then passed as plain values.

Every section is a frozen dataclass with per-field documentation. ``load_params`` rejects unknown
keys and wrong values with an error naming the file and the dotted key, so a typo in
``params.yaml`` or a ``-S`` override never runs silently with a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ncil.data.catalog import DATASETS, class_split_counts
from ncil.data.scenario import ORDER_SEED_MAX, task_sizes
from ncil.pipeline import paths


class ConfigError(ValueError):
    """A configuration key is unknown, missing or has an invalid value."""


# A method's per-setting weights: ((scenario name, weight), ...), sorted by name; written in YAML as a
# mapping {scenario name: weight}. Hashable and comparable, as every field of a frozen config.
ScenarioWeights = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class DatasetConfig:
    name: str  # registry name of the data set (digits, ...)
    n_classes: int  # number of classes in the full data set
    image_size: int  # side of the (square) images fed to the model
    channels: int  # colour channels
    mean: tuple[float, ...]  # per-channel normalisation mean (on [0, 1] pixels)
    std: tuple[float, ...]  # per-channel normalisation std
    test_fraction: float = 0.2  # share of each class held out as test set (datasets without one)
    val_fraction: float = 0.1  # share of each class's training images carved out for validation
    split_seed: int = 0  # seed of the stratified train/val/test split
    crop_padding: int = 0  # RandomCrop augmentation: padding in pixels on every side (0 = off)
    crop_fill: str = "black"  # crop padding value: black (torchvision's fill=0) or mean (0 after normalising)
    hflip: bool = False  # RandomHorizontalFlip(0.5) augmentation
    jitter_brightness: float = 0.0  # ColorJitter brightness: factor uniform in [max(0, 1-b), 1+b] (0 = off)
    jitter_contrast: float = 0.0  # ColorJitter contrast, same range rule
    jitter_saturation: float = 0.0  # ColorJitter saturation, same range rule (RGB data sets only)
    jitter_hue: float = 0.0  # ColorJitter hue: shift uniform in [-h, h] turns, h <= 0.5 (RGB data sets only)
    random_resized_crop: bool = False  # RandomResizedCrop(image_size) -> flip instead of the padded crop (ImageNet-Subset)
    # --- raw inputs and prepare-time geometry (ncil/data/{cifar,tinyimagenet,imagefolder}.py; unused by digits) ---
    root: str = ""  # folder holding the raw data set (e.g. data/raw/cifar-100-python)
    download: bool = False  # CIFAR-100 only: let torchvision download into root's parent folder when absent
    class_list: str = ""  # file of class folder names to keep, one a line (ImageNet-Subset's 100 wnids)
    train_resize: int = 0  # prepare: shorter side of training images resized to this, then centre crop image_size (0: crop only)
    test_resize: int = 0  # prepare: the same for test images (ImageNet-Subset: 256 -> CenterCrop 224)
    max_classes: int = 0  # smoke runs: keep only the first N classes (sorted names); 0 = all
    max_train_per_class: int = 0  # smoke runs: keep the first N training images of each class; 0 = all
    max_test_per_class: int = 0  # smoke runs: keep the first N test images of each class; 0 = all


@dataclass(frozen=True)
class ModelConfig:
    name: str  # backbone: vit (method-spec 3.2)
    img_size: int  # input side in pixels
    patch_size: int  # patch side in pixels
    embed_dim: int  # token dimension d
    depth: int  # number of GPSA blocks (the encoder); one class-attention block follows
    num_heads: int  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden size / embed_dim
    drop_path: float = 0.1  # stochastic depth, linearly spaced over the blocks
    locality_strength: float = 1.0  # GPSA locality initialisation
    resnet_width: int = 64  # hybrid backbone (official preset): channels of the ResNet-18's first stage, doubled per stage (64 = the released code)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int  # epochs per task (base task included)
    batch_size: int  # images per optimisation step
    lr: float  # Adam learning rate
    weight_decay: float = 0.0  # Adam (coupled L2) weight decay
    lr_step: int = 0  # StepLR step size in epochs (0 = constant learning rate)
    lr_gamma: float = 0.1  # StepLR decay factor
    eval_batch_size: int = 256  # images per evaluation forward pass
    # Task 0 may use its own optimiser (method-spec 5.6: ImageNet-Subset's SGD base task; ncil/learning/optim.py).
    base_optimizer: str = "adam"  # adam (as every other task) or sgd (momentum, MultiStepLR at base_milestones)
    base_epochs: int = 0  # epochs of task 0 (0 = train.epochs)
    base_lr: float = 0.0  # learning rate of task 0 (0 = train.lr)
    base_weight_decay: float = -1.0  # weight decay of task 0 (negative = train.weight_decay)
    base_momentum: float = 0.9  # SGD momentum of task 0 (sgd only)
    base_milestones: tuple[int, ...] = ()  # sgd: MultiStepLR epochs of task 0 (adam: StepLR lr_step as other tasks)


@dataclass(frozen=True)
class ScenarioConfig:
    initial_increment: int  # F: classes of the base task
    increment: int  # C: classes of every later task


@dataclass(frozen=True)
class MethodConfig:
    """One method: its task-0 recipe and the loss terms of tasks t >= 1 (weights 0 = term off)."""

    base_recipe: str  # name of the task-0 recipe; methods with the same recipe share task 0
    preset: str = "paper"  # paper (what the paper describes) or official (the released code); method-spec Section 0
    train_on: str = "current"  # current: only task t's classes (NECIL); seen: all classes so far (joint)
    backbone: str = "vit"  # vit (the `model` section), resnet18 (torchvision, CIFAR stem; PASS) or hybrid (released code, 3.1)
    rotation: bool = False  # PASS self-supervision: 4 rotations, labels 4y+k (method-spec 2.3)
    ce_temperature: float = 1.0  # logits / temperature in the cross-entropy (PASS uses 0.1)
    feature_kd: float = 0.0  # lambda_fkd: PASS feature distillation, Frobenius norm (4.3)
    proto_aug: float = 0.0  # lambda_proto: PASS prototype augmentation (4.5)
    pks: float = 0.0  # lambda_pks: patch-level knowledge selection, Eq. 2-3
    pks_weighting: str = "inverse"  # inverse (Eq. 2), uniform (W_i = 1), direct (W_i ~ distance); Table 5
    pks_p: int = 2  # norm of the CLS-to-patch distance: 2 (paper), 1 (released code)
    pks_detach: bool = False  # stop the gradient through the PKS weights
    pr: float = 0.0  # lambda_pr: prototype restoration, Eq. 4-6
    pr_centers: str = "task_start"  # class centers mu of Eq. 4: task_start (code, D8) or epoch (recomputed)
    # --- the released code's extra terms and forms (method-spec Sections 0 and 8; defaults = the paper) ---
    mixup_rounds: int = 0  # mixup virtual classes: rounds per step (method-spec 2.4; 0 = off, released code 4)
    contrastive: float = 0.0  # lambda_con: supervised contrastive loss (method-spec 4.2; code 0.1, 0.03 for 40+3x20)
    contrastive_temperature: float = 0.07  # tau_c of the contrastive similarities (method-spec 4.2)
    contrastive_by_scenario: ScenarioWeights = ()  # lambda_con in the named scenarios instead of `contrastive` (4.8 table: 40+3x20 0.03); method_for_split
    transfer: float = 0.0  # lambda_tr: transfer layer T and its loss (method-spec 4.4; 0 = no T, released code 1)
    pks_form: str = "paper"  # paper (Eq. 2-3: per-sample sum + CLS term) or official (method-spec 4.6 [code], D5)
    pr_form: str = "paper"  # paper (Eq. 4-6: one joint CE) or official (method-spec 4.7 [code]: L_off + 0.1 L_rest, D7/D9)
    proto_aug_form: str = "paper"  # paper or official (method-spec 4.5: through T, real columns 0..4K_tot only)
    train_images: str = "train"  # train (val images held out) or train_val (the released code trains on all of them)
    # --- rehearsal with DyTox (Table 4; docs/dytox.md): backbone dytox only; the defaults (off) keep every NECIL method ---
    exemplars_per_class: int = 0  # exemplar memory: training images kept per learned class (DyTox: 20); 0 = none (NECIL)
    exemplar_rule: str = "icarl"  # herding: icarl (iCaRL's Algorithm 4) or code (the released Welling iteration)
    dytox_distillation: str = "kd"  # kd (DyTox), pks (DyTox + PKS: KD replaced by Eq. 2-3, weight `pks`) or kd+pks
    pks_cls_pairing: str = "same_token"  # DyTox + PKS's [CLS] term: same_token (e_t-1 under both models) or last
    divergence: float = 0.0  # lambda_div: DyTox's divergence head (0.1); 0 = no head
    finetune_epochs: int = 0  # balanced fine-tuning on the memory after each task t >= 1 (DyTox: 20); 0 = off
    finetune_lr: float = 0.0  # its constant learning rate (DyTox: 2.5e-5 at batch 256)
    # DyTox's optimiser (docs/dytox.md 5): adam = the train section's recipe (Adam, coupled L2, StepLR), as before;
    # adamw = the released one: AdamW (decoupled train.weight_decay, none on biases, norms, tokens and the positional
    # embedding), per task a linear warm-up then a cosine to min_lr (ncil.learning.optim.warmup_cosine_lr), and the
    # fine-tuning AdamW at its constant finetune_lr. The three schedule keys below: adamw only (released 5, 1e-6, 1e-5).
    dytox_optimizer: str = "adam"
    warmup_epochs: int = 0  # epochs of linear warm-up from warmup_lr to train.lr at the start of every task
    warmup_lr: float = 0.0  # the learning rate of epoch 0 when warmup_epochs > 0
    min_lr: float = 0.0  # where the cosine ends (reached after train.epochs epochs)
    # DeiT's repeated-augmentation sampler in both phases (released --repeated-aug; ncil.data.arrays, docs/dytox.md 5):
    # an epoch of floor(n / 256) * 256 rows, each drawn image 3 times in a row; off: every image once per epoch.
    repeated_aug: bool = False
    # --- EFC / EFC++ (issue 25; docs/efcil.md "EFC++ in the pipeline"; ncil.learning.efc_training) ---
    efc: bool = False  # elastic feature consolidation: L_EFM on tasks t >= 1; every task stores E, covariances
    efc_old_classes: str = "rebalance"  # rebalance (EFC++: heads re-trained after each task) or pr_ace (EFC)
    efc_lambda: float = 10.0  # lambda_EFM (released --efc_lamb 10)
    efc_damping: float = 0.1  # eta, the damping (released --efc_damping 0.1)
    efc_sigma: float = 0.2  # kernel width of the EFM prototype drift (released --efc_protoupdate 0.2)
    efc_rebalance_epochs: int = 50  # EFC++'s re-balancing epochs (released --balanced_epochs 50)
    efc_lr: float = 0.0  # Adam learning rate of tasks t >= 1 (released: 1e-4); 0 = train.lr
    # --- FeCAM (issue 25; docs/efcil.md): backbone resnet18, trained on task 0 only, frozen after ---
    classifier: str = "head"  # head (argmax of the head's logits), fecam (Mahalanobis to per-class statistics) or ncm
    fecam_tukey: float = 0.5  # lambda of Tukey's ladder on the frozen features (FeCAM: 0.5; 0 = log)
    fecam_shrink_times: int = 2  # covariance shrinkages before the correlation normalisation (released: 2)
    # --- drift compensation (issue 25; docs/efcil.md): classifier ncm (nearest class mean over stored prototypes),
    # the old classes' prototypes moved after every task t >= 1 by the drift estimate (ncil.learning.drift_training).
    # Each mode's constants are 0 (off) unless that mode is chosen, and must then be set (> 0): DRIFT_OPTIONS.
    drift: str = "none"  # none (prototypes kept), sdc (Yu et al.), adc (Goswami et al.) or ldc (Gomez-Villa et al.)
    sdc_sigma: float = 0.0  # sdc: width sigma of the Gaussian kernel (released 0.3)
    adc_alpha: float = 0.0  # adc: step size of the adversarial attack (released 25)
    adc_steps: int = 0  # adc: attack iterations (released 3)
    adc_samples: int = 0  # adc: nearest current samples per old prototype (released 100)
    ldc_epochs: int = 0  # ldc: epochs of the projector's Adam training (released 20)
    ldc_lr: float = 0.0  # ldc: the projector's Adam learning rate (released 1e-3)
    # --- AdaGauss (issue 25; docs/efcil.md "AdaGauss in the pipeline"; ncil.learning.adagauss_training): classifier
    # bayes over per-class Gaussians in a latent space, adapted to every new task. Its options only with adagauss true.
    adagauss: bool = False  # CE + projected distillation + anti-collapse; Gaussians adapted after every task
    adagauss_latent: int = 64  # S, the bottleneck's width (released --S 64); train.batch_size must exceed it
    adagauss_lambda: float = 10.0  # weight of the projected distillation (released --lamb 10)
    adagauss_alpha: float = 1.0  # weight of the anti-collapse loss (released --alpha 1)
    adagauss_beta: float = 1.0  # clamp of the Cholesky diagonal in the anti-collapse loss (released --beta 1)
    adagauss_samples: int = 10000  # samples per old class carried through the adapter (released --N 10000)
    adagauss_adapter_lr: float = 0.01  # the adapter's SGD learning rate (released --lr-adapter 0.01)


# runtime.compile: false (eager), true (torch.compile), graphs (torch.compile mode reduce-overhead: CUDA graphs, CUDA only).
CompileSetting = typing.Union[bool, str]
COMPILE_SETTINGS = (False, True, "graphs")
# runtime.static_shapes: auto (static under runtime.compile graphs, else dynamic), true or false; resolve_static_shapes.
StaticShapesSetting = typing.Literal["auto", True, False]
STATIC_SHAPES = ("auto", True, False)


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:N
    threads: int = 1  # torch intra-op threads; pinned because it changes floating-point results
    gpus_per_job: int = 0  # Snakemake `gpu` resource each training job claims
    compile: CompileSetting = False  # torch.compile student and teacher: false, true or graphs (CUDA graphs; COMPILE_SETTINGS)
    numerics: str = "native"  # native (fastest kernels of this CPU) or portable (ncil.learning.numerics: same bits on every x86 CPU type)
    resume_every: int = 1  # epochs between saves of a training task's resumable state (ncil.learning.resume); 0 = off
    precision: str = "auto"  # GPU arithmetic: fp32, bf16 (autocast) or auto (the method's preset: PRESET_PRECISION); CPU runs are always fp32
    # The official step's shapes (issue 21): true = every step the same shapes and no host sync (all R*B mixup
    # candidates masked, colour jitter selected per image), false = the compacted rows (the default grid's
    # bytes), auto = true exactly under compile: graphs (CUDA graphs); resolve_static_shapes.
    static_shapes: StaticShapesSetting = "auto"


@dataclass(frozen=True)
class Params:
    preset: str  # the grid's: its methods' one preset (paper or official, method-spec Section 0) or mixed; GRID_PRESETS
    order_seed: int  # seed of the class order (1993 in every paper of the field)
    seeds: tuple[int, ...]  # initialisation seeds of the runs
    dataset: DatasetConfig
    model: ModelConfig
    train: TrainConfig
    runtime: RuntimeConfig
    scenario: dict[str, ScenarioConfig] = field(default_factory=dict)
    method: dict[str, MethodConfig] = field(default_factory=dict)
    # An explicit class order (original class ids, a permutation of 0..n_classes-1), for a protocol that fixes
    # one (DyTox's CIFAR-100 order, conf/experiment/cifar100_dytox.yaml); absent: order_seed's. Optional.
    class_order: tuple[int, ...] | None = None
    # The folder the grid owns under runs/ and results/ (runs/<grid>/..., results/<grid>/...; data/<dataset>/ stays
    # shared): optional, None = the data set's name (the default grid's paths). ncil.pipeline.experiment_grid.grid_folder.
    grid: str | None = None


# Top-level keys params.yaml may leave out (their Params default applies): the default grid has neither.
OPTIONAL_TOP = ("class_order", "grid")


# The fixed sections of params.yaml and their records (scenario and method hold named entries).
SECTIONS = {"dataset": DatasetConfig, "model": ModelConfig, "train": TrainConfig, "runtime": RuntimeConfig}
PRESETS = ("paper", "official")
# The top-level `preset` of a grid: paper or official (all its methods of that preset), or mixed (either; conf/preset/*.yaml).
GRID_PRESETS = (*PRESETS, "mixed")
PRECISIONS = ("auto", "fp32", "bf16")  # runtime.precision
# runtime.precision auto on a GPU, per method preset. The released code has no autocast (models/fcs.py): fp32.
PRESET_PRECISION = {"paper": "bf16", "official": "fp32"}
BACKBONES = ("vit",)
OPTIMIZERS = ("adam", "sgd")
METHOD_BACKBONES = ("vit", "resnet18", "hybrid", "dytox")
TRAIN_ON = ("current", "seen")
PKS_WEIGHTINGS = ("inverse", "uniform", "direct")
PR_CENTERS = ("task_start", "epoch")
EXEMPLAR_RULES = ("icarl", "code")  # as ncil.methods.exemplars.RULES
DYTOX_DISTILLATIONS = ("kd", "pks", "kd+pks")  # as ncil.methods.dytox.DISTILLATIONS
DYTOX_OPTIMIZERS = ("adam", "adamw")  # method dytox_optimizer (ncil.learning.optim.dytox_recipe)
CLS_PAIRINGS = ("same_token", "last")  # as ncil.methods.dytox.CLS_PAIRINGS
CLASSIFIERS = ("head", "fecam", "ncm", "bayes")  # method classifier (bayes: AdaGauss only)
DRIFTS = ("none", "sdc", "adc", "ldc")  # method drift (classifier ncm)
FORMS = ("paper", "official")  # method pks_form, pr_form, proto_aug_form
TRAIN_IMAGES = ("train", "train_val")  # method train_images
NUMERICS = ("native", "portable")  # runtime.numerics (ncil.learning.numerics)
CROP_FILLS = ("black", "mean")  # as ncil.data.augment.CROP_FILLS
# Method fields that shape task 0: methods sharing a base recipe must agree on them.
BASE_RECIPE_FIELDS = ("preset", "backbone", "rotation", "ce_temperature", "mixup_rounds", "contrastive",
                      "contrastive_temperature", "train_images", "exemplars_per_class", "exemplar_rule",
                      "dytox_optimizer", "warmup_epochs", "warmup_lr", "min_lr", "repeated_aug",
                      "classifier", "fecam_tukey", "fecam_shrink_times", "efc", "adagauss", "adagauss_latent",
                      "adagauss_alpha", "adagauss_beta")
# Names of scenarios, methods and base recipes become folder names and Snakemake wildcard values.
NAME = re.compile(r"[A-Za-z0-9_-]+")


def _fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {message}")


def _coerce(value, annotation, source: str, key: str):
    """Check ``value`` against a (simple) type annotation and return it in that type."""
    if annotation == ScenarioWeights:
        return _scenario_weights(value, source, key)
    if typing.get_origin(annotation) is typing.Literal:  # a fixed set of YAML values (bool or text)
        allowed = typing.get_args(annotation)
        if not any(type(value) is type(a) and value == a for a in allowed):  # True is not 1, "true" not True
            names = ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in allowed)
            raise _fail(source, key, f"expected one of {names}, got {value!r}")
        return value
    if annotation == CompileSetting:
        if not (isinstance(value, bool) or value == "graphs"):
            raise _fail(source, key, f"expected false, true or graphs, got {value!r}")
        return value
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise _fail(source, key, f"expected a list, got {value!r}")
        return tuple(_coerce(v, item_type, source, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise _fail(source, key, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(source, key, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str) and _reads_as_number(value):
            raise _fail(source, key, f"expected a number, got the text {value!r} (YAML reads an exponent without "
                                     f"a dot, such as 1e-3, as text: write 1.0e-3 or 0.001)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(source, key, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise _fail(source, key, f"expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise _fail(source, key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # programming error


def _scenario_weights(value, source: str, key: str) -> ScenarioWeights:
    """A mapping {scenario: weight} (or the pairs ``to_dict`` writes) as sorted (name, weight) pairs."""
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value):
        pairs = [tuple(v) for v in value]
    else:
        raise _fail(source, key, f"expected a mapping of scenario names to weights, got {value!r}")
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise _fail(source, key, f"expected each scenario once, got {names}")
    out = []
    for name, weight in pairs:
        _name(source, f"{key}.{name}", name)
        out.append((name, _coerce(weight, float, source, f"{key}.{name}")))
    return tuple(sorted(out))


def _reads_as_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def parse_section(cls, data, source: str, prefix: str):
    """Build dataclass ``cls`` from mapping ``data``, rejecting unknown and missing keys."""
    if not isinstance(data, dict):
        raise _fail(source, prefix, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _fail(source, f"{prefix}.{unknown[0]}", f"unknown key (expected one of: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _fail(source, key, "missing required key")
            continue
        values[name] = _coerce(data[name], hints[name], source, key)
    return cls(**values)


def _positive(source: str, key: str, value) -> None:
    if value <= 0:
        raise _fail(source, key, f"expected a positive value, got {value!r}")


def _choice(source: str, key: str, value, choices) -> None:
    if value not in choices:
        raise _fail(source, key, f"expected one of {list(choices)}, got {value!r}")


def _fraction(source: str, key: str, value) -> None:
    if not 0.0 <= value < 1.0:
        raise _fail(source, key, f"expected a fraction in [0, 1), got {value!r}")


def _at_least_zero(source: str, key: str, value, what: str = "a value") -> None:
    if value < 0:
        raise _fail(source, key, f"expected {what} >= 0, got {value!r}")


def _name(source: str, key: str, name) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _fail(source, key, f"expected a name of letters, digits, _ and - (it becomes a folder name), got {name!r}")


METHOD_CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "method"  # Hydra's method group
SCENARIO_CONF_DIR = METHOD_CONF_DIR.parent / "scenario"  # Hydra's scenario group


def defined_methods() -> list[str]:
    """The method names Hydra can compose (conf/method/*.yaml); empty where conf/ is not beside the package."""
    return sorted(f.stem for f in METHOD_CONF_DIR.glob("*.yaml")) if METHOD_CONF_DIR.is_dir() else []


def defined_scenarios() -> list[str]:
    """The scenario names Hydra can compose (conf/scenario/*.yaml); empty where conf/ is not beside the package."""
    return sorted(f.stem for f in SCENARIO_CONF_DIR.glob("*.yaml")) if SCENARIO_CONF_DIR.is_dir() else []


def parse_params(data: dict, source: str = "params.yaml") -> Params:
    """Validate a params mapping (as composed by Hydra) into a frozen ``Params``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    top = {f.name for f in dataclasses.fields(Params)}
    unknown = sorted(set(data) - top)
    if unknown:
        raise _fail(source, unknown[0], f"unknown key (expected one of: {', '.join(sorted(top))})")
    for name in top:
        if name not in data and name not in OPTIONAL_TOP:
            raise _fail(source, name, "missing required key")
    grid = data.get("grid")
    if grid is not None:
        _name(source, "grid", grid)
        if grid in paths.RESERVED_RESULT_FOLDERS:
            raise _fail(source, "grid", f"results/{grid}/ holds every grid's reports: expected another folder name "
                                        f"(not one of {', '.join(paths.RESERVED_RESULT_FOLDERS)}), got {grid!r}")
    sections = {name: parse_section(cls, data[name], source, name) for name, cls in SECTIONS.items()}
    for mapping in ("scenario", "method"):
        if not isinstance(data[mapping], dict) or not data[mapping]:
            raise _fail(source, mapping, f"expected a non-empty mapping of named {mapping}s, got {data[mapping]!r}")
    scenario = {
        name: parse_section(ScenarioConfig, spec, source, f"scenario.{name}") for name, spec in data["scenario"].items()
    }
    known = defined_methods()
    for name in data["method"]:
        _name(source, f"method.{name}", name)
        if known and name not in known:
            raise _fail(source, f"method.{name}", f"unknown method (expected one of the methods of {METHOD_CONF_DIR.parent.name}/"
                        f"{METHOD_CONF_DIR.name}/: {', '.join(known)}; a new method is a file {METHOD_CONF_DIR.name}/<name>.yaml there)")
    method = {name: parse_section(MethodConfig, spec, source, f"method.{name}") for name, spec in data["method"].items()}
    seeds = _coerce(data["seeds"], tuple[int, ...], source, "seeds")
    params = Params(
        preset=_coerce(data["preset"], str, source, "preset"),
        order_seed=_coerce(data["order_seed"], int, source, "order_seed"),
        class_order=(None if data.get("class_order") is None
                     else _coerce(data["class_order"], tuple[int, ...], source, "class_order")),
        seeds=seeds,
        **sections,
        scenario=scenario,
        method=method,
        grid=grid,
    )
    _validate(params, source)
    return params


def _validate_class_order(order: tuple[int, ...], dataset, source: str) -> None:
    """``class_order``: every class id 0..n_classes-1 of the data set exactly once."""
    n = dataset.n_classes
    problems = [f"{label} {ids[:5]}" for label, ids in (
        ("repeated", sorted({c for c in order if order.count(c) > 1})),
        ("missing", sorted(set(range(n)) - set(order))),
        ("out of range", sorted({c for c in order if not 0 <= c < n})),
    ) if ids]
    if problems:
        raise _fail(source, "class_order", f"expected each class id 0..{n - 1} of dataset {dataset.name} exactly once "
                                           f"(dataset.n_classes: {n}), got {len(order)} ids: {'; '.join(problems)}")


def _validate(p: Params, source: str) -> None:
    _choice(source, "preset", p.preset, GRID_PRESETS)
    if not p.seeds:
        raise _fail(source, "seeds", "expected at least one seed")
    if len(set(p.seeds)) != len(p.seeds):
        raise _fail(source, "seeds", f"expected distinct seeds, got {list(p.seeds)}")
    for i, seed in enumerate(p.seeds):
        _at_least_zero(source, f"seeds[{i}]", seed, "a seed")
    if not 0 <= p.order_seed <= ORDER_SEED_MAX:
        raise _fail(source, "order_seed", f"expected a seed in 0..{ORDER_SEED_MAX} (NumPy's legacy RandomState), "
                                          f"got {p.order_seed}")
    _validate_dataset(p, source)
    if p.class_order is not None:
        _validate_class_order(p.class_order, p.dataset, source)
    _choice(source, "model.name", p.model.name, BACKBONES)
    for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "resnet_width"):
        _positive(source, f"model.{key}", getattr(p.model, key))
    if p.model.img_size != p.dataset.image_size:
        raise _fail(
            source, "model.img_size", f"expected the data set's image_size {p.dataset.image_size}, got {p.model.img_size}"
        )
    if p.model.img_size % p.model.patch_size:
        raise _fail(source, "model.patch_size", f"expected a divisor of img_size {p.model.img_size}, got {p.model.patch_size}")
    if p.model.embed_dim % p.model.num_heads:
        raise _fail(source, "model.num_heads", f"expected a divisor of embed_dim {p.model.embed_dim}, got {p.model.num_heads}")
    if not 0.0 <= p.model.drop_path < 1.0:
        raise _fail(source, "model.drop_path", f"expected a rate in [0, 1), got {p.model.drop_path}")
    for key in ("epochs", "batch_size", "lr", "eval_batch_size"):
        _positive(source, f"train.{key}", getattr(p.train, key))
    _at_least_zero(source, "train.weight_decay", p.train.weight_decay)
    _at_least_zero(source, "train.lr_step", p.train.lr_step, "a step in epochs (0 = constant)")
    if not 0.0 < p.train.lr_gamma <= 1.0:
        raise _fail(source, "train.lr_gamma", f"expected a decay factor in (0, 1], got {p.train.lr_gamma}")
    _choice(source, "train.base_optimizer", p.train.base_optimizer, OPTIMIZERS)
    for key in ("base_epochs", "base_lr"):
        if getattr(p.train, key) < 0:
            raise _fail(source, f"train.{key}", f"expected >= 0 (0 = as the other tasks), got {getattr(p.train, key)}")
    if not 0.0 <= p.train.base_momentum < 1.0:
        raise _fail(source, "train.base_momentum", f"expected a momentum in [0, 1), got {p.train.base_momentum}")
    milestones = p.train.base_milestones
    if any(m <= 0 for m in milestones) or list(milestones) != sorted(set(milestones)):
        raise _fail(source, "train.base_milestones", f"expected increasing positive epochs, got {list(milestones)}")
    if milestones and p.train.base_optimizer != "sgd":
        raise _fail(source, "train.base_milestones", "expected [] unless train.base_optimizer is sgd")
    if p.runtime.threads < 1:
        raise _fail(source, "runtime.threads", f"expected a positive integer, got {p.runtime.threads}")
    _at_least_zero(source, "runtime.gpus_per_job", p.runtime.gpus_per_job, "a GPU count")
    _at_least_zero(source, "runtime.resume_every", p.runtime.resume_every, "a number of epochs (0 = off)")
    _choice(source, "runtime.precision", p.runtime.precision, PRECISIONS)
    if p.runtime.numerics not in NUMERICS:
        raise _fail(source, "runtime.numerics", f"expected one of {', '.join(NUMERICS)}, got {p.runtime.numerics!r}")
    if not (p.runtime.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", p.runtime.device)):
        raise _fail(source, "runtime.device", f"expected auto, cpu, cuda or cuda:N (N a device index 0, 1, ...), "
                                              f"got {p.runtime.device!r}")
    base_splits = {paths.base_split_id(sc.initial_increment): sc.initial_increment for sc in p.scenario.values()}
    for name, sc in p.scenario.items():
        _name(source, f"scenario.{name}", name)
        if name in base_splits:
            raise _fail(source, f"scenario.{name}",
                        f"{name!r} is the folder of the task-0 runs shared by every setting with initial_increment "
                        f"{base_splits[name]}: expected another name (e.g. {name}_inc{sc.increment})")
        try:
            task_sizes(p.dataset.n_classes, sc.initial_increment, sc.increment)
        except ValueError as err:
            field_name, message = str(err).split(": ", 1)
            raise _fail(source, f"scenario.{name}.{field_name}", message) from None
    for name, m in p.method.items():
        key = f"method.{name}"
        _name(source, key, name)
        _name(source, f"{key}.base_recipe", m.base_recipe)
        _choice(source, f"{key}.preset", m.preset, PRESETS)
        _choice(source, f"{key}.train_on", m.train_on, TRAIN_ON)
        _choice(source, f"{key}.backbone", m.backbone, METHOD_BACKBONES)
        _choice(source, f"{key}.pks_weighting", m.pks_weighting, PKS_WEIGHTINGS)
        _choice(source, f"{key}.pks_p", m.pks_p, (1, 2))
        _choice(source, f"{key}.pr_centers", m.pr_centers, PR_CENTERS)
        for form in ("pks_form", "pr_form", "proto_aug_form"):
            _choice(source, f"{key}.{form}", getattr(m, form), FORMS)
        _choice(source, f"{key}.train_images", m.train_images, TRAIN_IMAGES)
        _positive(source, f"{key}.ce_temperature", m.ce_temperature)
        _positive(source, f"{key}.contrastive_temperature", m.contrastive_temperature)
        _at_least_zero(source, f"{key}.mixup_rounds", m.mixup_rounds, "a number of rounds (0 = off)")
        for weight in ("feature_kd", "proto_aug", "pks", "pr", "contrastive", "transfer"):
            if getattr(m, weight) < 0:
                raise _fail(source, f"{key}.{weight}", f"expected a weight >= 0, got {getattr(m, weight)}")
        _validate_scenario_weights(p, source, name, m)
        _validate_preset_options(source, key, m)
        _validate_dytox_options(source, key, m)
        _validate_dytox_schedule(p, source, key, m)
        _validate_fecam_options(source, key, m)
        _validate_efc_options(source, key, m)
        _validate_drift_options(source, key, m)
        _validate_adagauss_options(p, source, key, m)
    _validate_grid_preset(p, source)
    # Methods of one base recipe share task 0 of every base split: its fields must agree there, the
    # contrastive weight as each split resolves it (method_for_split).
    for split in sorted({paths.base_split_id(sc.initial_increment) for sc in p.scenario.values()}):
        recipes: dict[str, tuple[str, tuple]] = {}
        for name, m in p.method.items():
            resolved = method_for_split(p, m, split)
            base = tuple(getattr(resolved, f) for f in BASE_RECIPE_FIELDS)
            other = recipes.setdefault(m.base_recipe, (name, base))
            if other[1] != base:
                differ = [f for f, a, b in zip(BASE_RECIPE_FIELDS, other[1], base) if a != b]
                raise _fail(
                    source, f"method.{name}.base_recipe",
                    f"{m.base_recipe!r} is shared with method {other[0]!r}, which differs in "
                    f"{', '.join(differ)} for task 0 of {split} (methods of one base_recipe must agree on "
                    f"{', '.join(BASE_RECIPE_FIELDS)}): give one of them another base_recipe name",
                )


def _validate_scenario_weights(p: Params, source: str, name: str, m: MethodConfig) -> None:
    """contrastive_by_scenario: known scenario names, weights >= 0, one weight per shared task 0."""
    key = f"method.{name}.contrastive_by_scenario"
    defined = defined_scenarios()
    known = set(defined) | set(p.scenario)
    for scenario, weight in m.contrastive_by_scenario:
        if not defined and re.fullmatch(r"base\d+_inc\d+", scenario):
            pass  # no conf/ beside the package (an installed copy): a well-formed name of another grid
        elif scenario not in known:
            raise _fail(source, f"{key}.{scenario}", f"unknown scenario (expected one of the scenarios of "
                        f"{SCENARIO_CONF_DIR.parent.name}/{SCENARIO_CONF_DIR.name}/ or of this grid: "
                        f"{', '.join(sorted(known))})")
        if weight < 0:
            raise _fail(source, f"{key}.{scenario}", f"expected a weight >= 0, got {weight}")
    seen: dict[str, tuple[str, float]] = {}
    for scenario, sc in p.scenario.items():
        split = paths.base_split_id(sc.initial_increment)
        weight = method_for_split(p, m, scenario).contrastive
        other = seen.setdefault(split, (scenario, weight))
        if other[1] != weight:
            raise _fail(source, key, f"scenarios {other[0]!r} and {scenario!r} share task 0 ({split}) but give "
                        f"contrastive weights {other[1]} and {weight}: task 0 trains with one weight; expected "
                        f"the same weight for both (or a grid without one of them)")


def _validate_grid_preset(p: Params, source: str) -> None:
    """The top-level preset names the grid's methods: paper or official (every method of that preset),
    or mixed (methods of either preset: the default digits grid, and any method list under it)."""
    presets = {m.preset for m in p.method.values()}
    expected = next(iter(presets)) if len(presets) == 1 else "mixed"
    if p.preset != expected and p.preset != "mixed":
        which = ", ".join(f"{name} ({m.preset})" for name, m in p.method.items())
        instead = f", or list methods of the {p.preset} preset: method=[...]" if p.preset in PRESETS else ""
        raise _fail(source, "preset", f"expected {expected!r}, the preset of the grid's methods {which}; "
                    f"got {p.preset!r} (compose with preset={expected}, conf/preset/{expected}.yaml{instead})")


def method_for_split(p: Params, method: MethodConfig, split: str) -> MethodConfig:
    """The method as it trains in ``split``: a scenario name, or ``base<F>`` for the task 0 shared by F.

    Applies ``contrastive_by_scenario`` (method-spec 4.8: the released code uses lambda_con = 0.03 in
    40+3x20, 0.1 elsewhere): ``contrastive`` becomes the split's weight and the mapping is emptied, so
    the result (and a checkpoint's snapshot of it) names the weight that shaped the weights. A base
    split takes the weight of its scenarios (``_validate`` checks that they agree). A method without
    the mapping comes back as it is (the same object).
    """
    scenarios = [split] if split in p.scenario else [
        name for name, sc in p.scenario.items() if paths.base_split_id(sc.initial_increment) == split]
    if not scenarios:
        bases = sorted({paths.base_split_id(sc.initial_increment) for sc in p.scenario.values()})
        raise ValueError(f"split {split!r}: expected a scenario of the grid ({', '.join(p.scenario)}) "
                         f"or the base split of one ({', '.join(bases)})")
    if not method.contrastive_by_scenario:
        return method
    weights = dict(method.contrastive_by_scenario)
    chosen = next((weights[s] for s in scenarios if s in weights), method.contrastive)
    return dataclasses.replace(method, contrastive=chosen, contrastive_by_scenario=())


def _validate_dataset(p: Params, source: str) -> None:
    _choice(source, "dataset.name", p.dataset.name, DATASETS)
    facts = DATASETS[p.dataset.name]
    for key in ("n_classes", "image_size", "channels"):
        _positive(source, f"dataset.{key}", getattr(p.dataset, key))
    for key in ("mean", "std"):
        if len(getattr(p.dataset, key)) != p.dataset.channels:
            raise _fail(source, f"dataset.{key}", f"expected {p.dataset.channels} values (one per channel)")
    if any(s <= 0 for s in p.dataset.std):
        raise _fail(source, "dataset.std", f"expected positive values, got {list(p.dataset.std)}")
    _fraction(source, "dataset.test_fraction", p.dataset.test_fraction)
    _at_least_zero(source, "dataset.split_seed", p.dataset.split_seed, "a seed")
    _fraction(source, "dataset.val_fraction", p.dataset.val_fraction)
    _choice(source, "dataset.crop_fill", p.dataset.crop_fill, CROP_FILLS)
    for key in ("crop_padding", "train_resize", "test_resize", "max_classes", "max_train_per_class",
                "max_test_per_class"):
        if getattr(p.dataset, key) < 0:
            raise _fail(source, f"dataset.{key}", f"expected >= 0, got {getattr(p.dataset, key)}")
    for key in ("jitter_brightness", "jitter_contrast", "jitter_saturation", "jitter_hue"):
        if getattr(p.dataset, key) < 0:
            raise _fail(source, f"dataset.{key}", f"expected a strength >= 0, got {getattr(p.dataset, key)}")
    if p.dataset.jitter_hue > 0.5:
        raise _fail(source, "dataset.jitter_hue", f"expected at most 0.5 (half a turn), got {p.dataset.jitter_hue}")
    for key in ("jitter_saturation", "jitter_hue"):
        if getattr(p.dataset, key) > 0 and p.dataset.channels != 3:
            raise _fail(source, f"dataset.{key}", f"needs RGB images (channels 3), got channels {p.dataset.channels}")
    if p.dataset.max_classes and p.dataset.max_classes != p.dataset.n_classes:
        raise _fail(
            source, "dataset.n_classes",
            f"expected dataset.max_classes ({p.dataset.max_classes}) when max_classes is set, got {p.dataset.n_classes}",
        )
    if p.dataset.random_resized_crop and p.dataset.crop_padding:
        raise _fail(source, "dataset.crop_padding", "expected 0 with random_resized_crop (one crop per image)")
    if facts.raw and not p.dataset.root:
        raise _fail(source, "dataset.root", f"expected the folder of the raw {p.dataset.name} data, got an empty path")
    if not facts.raw:
        for key in ("max_classes", "max_train_per_class", "max_test_per_class"):
            if getattr(p.dataset, key):
                raise _fail(source, f"dataset.{key}", f"expected 0: {p.dataset.name} is always prepared whole "
                                                      f"(the max_* cuts apply to data sets read from dataset.root)")
    if facts.n_classes is not None:  # folder: prepare checks n_classes against the class folders
        if p.dataset.max_classes > facts.n_classes:
            raise _fail(source, "dataset.max_classes",
                        f"expected at most the {facts.n_classes} classes of {p.dataset.name}, "
                        f"got {p.dataset.max_classes}")
        if not p.dataset.max_classes and p.dataset.n_classes != facts.n_classes:
            cut = " (to keep only the first N, set dataset.max_classes=N as well)" if facts.raw else ""
            raise _fail(source, "dataset.n_classes",
                        f"expected {facts.n_classes}, the classes of {p.dataset.name}{cut}, got {p.dataset.n_classes}")
    # Every class must keep training images once val (and test, without a test set of its own) are carved out.
    pools = [(facts.smallest_class, f"the smallest class of {p.dataset.name}")]
    if facts.raw and p.dataset.max_train_per_class:
        pools.append((p.dataset.max_train_per_class, "dataset.max_train_per_class"))
    test_fraction = 0.0 if facts.own_test_set else p.dataset.test_fraction
    for n, why in pools:
        if n is None:
            continue
        n_train, n_val, n_test = class_split_counts(n, test_fraction, p.dataset.val_fraction)
        if n_train < 1:
            keys = "dataset.val_fraction" if facts.own_test_set else "dataset.test_fraction/val_fraction"
            raise _fail(source, keys,
                        f"leaves no training image in a class of {n} images ({why}): {n_test} go to test and {n_val} "
                        f"to val; expected fractions that leave at least one")


def load_params(path: str | Path = "params.yaml") -> tuple[Params, dict]:
    """Read and validate ``params.yaml``; return the typed config and the raw mapping."""
    from ncil.pipeline import io

    raw = io.read_yaml(path)
    return parse_params(raw, source=str(path)), raw


# Options only the official preset's step reads (ncil.methods.official_step), with their off values: a
# paper-preset method that set one would have it silently ignored by the paper step, so it is refused.
OFFICIAL_ONLY = {"mixup_rounds": 0, "contrastive": 0.0, "contrastive_by_scenario": (), "transfer": 0.0,
                 "pks_form": "paper", "pr_form": "paper", "proto_aug_form": "paper"}


def _require_values(source: str, key: str, m: MethodConfig, values: dict, message: str) -> None:
    """Refuse the first option of ``values`` that method ``m`` (params key ``key``) sets otherwise than given there:
    the options one mode of a method has no use for. ``message`` is formatted with ``off`` (the value expected) and
    ``got`` (the value found)."""
    for option, off in values.items():
        got = getattr(m, option)
        if got != off:
            raise _fail(source, f"{key}.{option}", message.format(off=off, got=got))


def _validate_preset_options(source: str, key: str, m: MethodConfig) -> None:
    """A method's options must be ones its preset's step trains with (before anything runs)."""
    if m.preset == "paper":
        _require_values(source, key, m, OFFICIAL_ONLY, f"only the official preset's step uses it: expected {{off!r}} "
                                                       f"under preset paper, got {{got!r}} (or set {key}.preset: official)")
        return
    if not m.rotation:
        raise _fail(source, f"{key}.rotation", "the official preset's step needs rotation: true (method-spec 2.3)")
    for weight, form in (("pr", "pr_form"), ("proto_aug", "proto_aug_form")):  # PKS has both forms there
        if getattr(m, weight) > 0 and getattr(m, form) != "official":
            raise _fail(source, f"{key}.{form}", f"the official preset's step implements {weight} in the official "
                                                 f"form only: expected 'official', got {getattr(m, form)!r}")


# Options only DyTox's loop reads (backbone dytox; ncil.learning.dytox_training), with their off values: set on
# another backbone they would be silently ignored, so they are refused; they never appear in its checkpoints.
DYTOX_ONLY = {"exemplars_per_class": 0, "exemplar_rule": "icarl", "dytox_distillation": "kd",
              "pks_cls_pairing": "same_token", "divergence": 0.0, "finetune_epochs": 0, "finetune_lr": 0.0,
              "dytox_optimizer": "adam", "warmup_epochs": 0, "warmup_lr": 0.0, "min_lr": 0.0, "repeated_aug": False}
# The schedule keys only dytox_optimizer adamw reads, with their off values.
ADAMW_ONLY = {"warmup_epochs": 0, "warmup_lr": 0.0, "min_lr": 0.0}
# Options of the NECIL methods' step that DyTox's loop does not read, with their off values.
NOT_DYTOX = {"rotation": False, "ce_temperature": 1.0, "feature_kd": 0.0, "proto_aug": 0.0, "pr": 0.0,
             "train_on": "current", "preset": "paper"}


def _validate_dytox_options(source: str, key: str, m: MethodConfig) -> None:
    """DyTox's options on backbone dytox only, and none of the NECIL step's terms there (docs/dytox.md)."""
    _choice(source, f"{key}.exemplar_rule", m.exemplar_rule, EXEMPLAR_RULES)
    _choice(source, f"{key}.dytox_distillation", m.dytox_distillation, DYTOX_DISTILLATIONS)
    _choice(source, f"{key}.pks_cls_pairing", m.pks_cls_pairing, CLS_PAIRINGS)
    _choice(source, f"{key}.dytox_optimizer", m.dytox_optimizer, DYTOX_OPTIMIZERS)
    for option in ("exemplars_per_class", "finetune_epochs", "warmup_epochs"):
        _at_least_zero(source, f"{key}.{option}", getattr(m, option))
    for option in ("divergence", "finetune_lr", "warmup_lr", "min_lr"):
        if getattr(m, option) < 0:
            raise _fail(source, f"{key}.{option}", f"expected a value >= 0, got {getattr(m, option)}")
    if m.backbone != "dytox":
        _require_values(source, key, m, DYTOX_ONLY, f"only DyTox's loop uses it: expected {{off!r}} on backbone "
                                                    f"{m.backbone}, got {{got!r}} (or set {key}.backbone: dytox)")
        return
    _require_values(source, key, m, NOT_DYTOX, "DyTox's loop (backbone dytox) does not use it: expected {off!r}, "
                                               "got {got!r}")
    if m.dytox_distillation == "kd" and m.pks > 0:
        raise _fail(source, f"{key}.pks", f"dytox_distillation kd trains no PKS term: expected 0, got {m.pks} "
                                          f"(or set {key}.dytox_distillation: pks)")
    if m.dytox_distillation != "kd" and m.pks <= 0:
        raise _fail(source, f"{key}.pks", f"dytox_distillation {m.dytox_distillation} needs lambda_pks > 0, got {m.pks}")
    if m.finetune_epochs and not m.exemplars_per_class:
        raise _fail(source, f"{key}.finetune_epochs", "the balanced fine-tuning trains on the exemplar memory: "
                                                      "expected 0 with exemplars_per_class 0")
    if m.finetune_epochs and m.finetune_lr <= 0:
        raise _fail(source, f"{key}.finetune_lr", f"expected a learning rate > 0 with finetune_epochs "
                                                  f"{m.finetune_epochs}, got {m.finetune_lr}")
    if m.dytox_optimizer != "adamw":
        _require_values(source, key, m, ADAMW_ONLY, f"only dytox_optimizer adamw's schedule reads it: expected "
                                                    f"{{off!r}}, got {{got!r}} (or set {key}.dytox_optimizer: adamw)")
    elif m.warmup_epochs == 0 and m.warmup_lr != 0:
        raise _fail(source, f"{key}.warmup_lr", f"warmup_epochs 0 has no warm-up: expected 0.0, got {m.warmup_lr}")


def _validate_dytox_schedule(p: Params, source: str, key: str, m: MethodConfig) -> None:
    """AdamW's warm-up ends inside every task (task 0's own epochs too: train.base_epochs, 0 = train.epochs) and
    warmup_lr, min_lr stay at most every task's learning rate (train.lr, train.base_lr where set); task 0 trains
    with Adam(W), not the SGD base recipe."""
    if m.backbone != "dytox" or m.dytox_optimizer != "adamw":
        return
    if p.train.base_optimizer != "adam":
        raise _fail(source, f"{key}.dytox_optimizer", f"adamw replaces task 0's Adam recipe: expected "
                                                      f"train.base_optimizer adam, got {p.train.base_optimizer!r}")
    for field_name in ("epochs", "base_epochs"):
        epochs = getattr(p.train, field_name)
        if epochs and m.warmup_epochs >= epochs:
            raise _fail(source, f"{key}.warmup_epochs", f"expected fewer than train.{field_name} ({epochs}): the "
                                                        f"warm-up ends inside the task, got {m.warmup_epochs}")
    for option in ("warmup_lr", "min_lr"):
        for field_name in ("lr", "base_lr"):
            lr = getattr(p.train, field_name)
            if lr and getattr(m, option) > lr:
                raise _fail(source, f"{key}.{option}", f"expected at most train.{field_name} ({lr}), "
                                                       f"got {getattr(m, option)}")


# Options only FeCAM reads (classifier fecam; ncil.learning.fecam_training), with their defaults; and the terms
# of tasks t >= 1 that FeCAM cannot have (its backbone is frozen after task 0: nothing is trained there).
FECAM_ONLY = {"fecam_tukey": 0.5, "fecam_shrink_times": 2}
FECAM_FROZEN = {"feature_kd": 0.0, "proto_aug": 0.0, "pks": 0.0, "pr": 0.0, "train_on": "current", "preset": "paper"}


def _validate_fecam_options(source: str, key: str, m: MethodConfig) -> None:
    """FeCAM (docs/efcil.md): classifier fecam on backbone resnet18 (its ReLU features are non-negative, as the
    Tukey transform needs), no incremental loss term, its options set only under classifier fecam."""
    _choice(source, f"{key}.classifier", m.classifier, CLASSIFIERS)
    if m.classifier != "fecam":
        _require_values(source, key, m, FECAM_ONLY, f"only the FeCAM classifier uses it: expected {{off!r}} "
                                                    f"with classifier {m.classifier}, got {{got!r}}")
        return
    if m.backbone != "resnet18":
        raise _fail(source, f"{key}.backbone", f"classifier fecam needs non-negative (ReLU) features: expected "
                                               f"'resnet18', got {m.backbone!r}")
    if m.fecam_tukey < 0:
        raise _fail(source, f"{key}.fecam_tukey", f"expected a Tukey lambda >= 0 (0 = log), got {m.fecam_tukey}")
    _at_least_zero(source, f"{key}.fecam_shrink_times", m.fecam_shrink_times, "a number of shrinkages")
    _require_values(source, key, m, FECAM_FROZEN, "FeCAM trains nothing after task 0 (frozen backbone): expected "
                                                  "{off!r}, got {got!r}")


# EFC / EFC++ (method efc true; ncil.learning.efc_training): its options with their defaults, refused without it;
# the re-balancing epochs (EFC++ only) refused under PR-ACE; the terms its step does not have.
EFC_ONLY = {"efc_old_classes": "rebalance", "efc_lambda": 10.0, "efc_damping": 0.1, "efc_sigma": 0.2,
            "efc_rebalance_epochs": 50, "efc_lr": 0.0}
EFC_OLD_CLASSES = ("rebalance", "pr_ace")
EFC_NOT_STEP = {"feature_kd": 0.0, "proto_aug": 0.0, "pks": 0.0, "pr": 0.0, "train_on": "current", "preset": "paper",
                "mixup_rounds": 0, "contrastive": 0.0, "transfer": 0.0, "classifier": "head"}


def _validate_efc_options(source: str, key: str, m: MethodConfig) -> None:
    """EFC (docs/efcil.md): its options only with efc true; on the resnet18 or vit backbone; none of the other
    methods' terms (its step is CE + L_EFM, ncil.learning.efc_training)."""
    if not m.efc:
        _require_values(source, key, m, EFC_ONLY, f"only EFC uses it: expected {{off!r}} without efc, got {{got!r}} "
                                                  f"(or set {key}.efc: true)")
        return
    _choice(source, f"{key}.efc_old_classes", m.efc_old_classes, EFC_OLD_CLASSES)
    _choice(source, f"{key}.backbone", m.backbone, ("resnet18", "vit"))
    for option in ("efc_lambda", "efc_damping"):
        if getattr(m, option) < 0:
            raise _fail(source, f"{key}.{option}", f"expected a weight >= 0, got {getattr(m, option)}")
    _positive(source, f"{key}.efc_sigma", m.efc_sigma)
    if m.efc_lr < 0:
        raise _fail(source, f"{key}.efc_lr", f"expected a learning rate >= 0 (0 = train.lr), got {m.efc_lr}")
    if m.efc_old_classes == "rebalance":
        _positive(source, f"{key}.efc_rebalance_epochs", m.efc_rebalance_epochs)
    else:
        _require_values(source, key, m, {"efc_rebalance_epochs": 50}, "only EFC++'s re-balancing (efc_old_classes "
                                                                     "rebalance) uses it: expected {off!r}, got {got!r}")
    _require_values(source, key, m, EFC_NOT_STEP, "EFC's step is cross-entropy + L_EFM (efc true): expected {off!r}, "
                                                   "got {got!r}")


# Each drift mode's constants (ncil.learning.drift_training), with their off values: set, and positive, with that mode
# only (the values the papers' released configurations use are in conf/method/{sdc,adc,ldc}.yaml).
# What classifier ncm's step has no place for: its cross-entropy reads the new classes' columns only
# (ncil.methods.objective.step_loss), so no term may add old classes' rows to it.
NCM_STEP = {"rotation": False, "proto_aug": 0.0, "pr": 0.0, "train_on": "current"}
DRIFT_OPTIONS = {"sdc": {"sdc_sigma": 0.0}, "adc": {"adc_alpha": 0.0, "adc_steps": 0, "adc_samples": 0},
                 "ldc": {"ldc_epochs": 0, "ldc_lr": 0.0}}


def _validate_drift_options(source: str, key: str, m: MethodConfig) -> None:
    """Drift compensation (docs/efcil.md): ``drift`` moves the prototypes of the NCM classifier only (classifier
    ncm, preset paper, not DyTox's loop); each mode's constants are set (> 0) under that mode and left off (0)
    under every other."""
    _choice(source, f"{key}.drift", m.drift, DRIFTS)
    if m.classifier != "ncm":
        _require_values(source, key, m, {"drift": "none"}, f"only the NCM classifier's prototypes are moved: expected "
                                                           f"{{off!r}} with classifier {m.classifier}, got {{got!r}}")
    else:
        _require_values(source, key, m, {"preset": "paper"}, "classifier ncm keeps the paper step's class centers "
                                                             "(the official step moves them through T): expected "
                                                             "{off!r}, got {got!r}")
        if m.backbone == "dytox":
            raise _fail(source, f"{key}.backbone", "classifier ncm runs in the NECIL loop: expected 'vit', "
                                                   "'resnet18' or 'hybrid', got 'dytox'")
        _require_values(source, key, m, NCM_STEP, "classifier ncm trains the current classes' cross-entropy and "
                                                  "feature distillation only: expected {off!r}, got {got!r}")
    for mode, options in DRIFT_OPTIONS.items():
        if mode != m.drift:
            _require_values(source, key, m, options, f"only drift {mode} uses it: expected {{off!r}} with drift "
                                                     f"{m.drift}, got {{got!r}}")
            continue
        for option in options:
            if getattr(m, option) <= 0:
                raise _fail(source, f"{key}.{option}", f"drift {mode} needs it: expected a value > 0, got "
                                                       f"{getattr(m, option)!r}")


# AdaGauss (method adagauss true; ncil.learning.adagauss_training): its options with their defaults, refused without
# it; the terms of the other methods' steps, which its step does not have.
ADAGAUSS_ONLY = {"adagauss_latent": 64, "adagauss_lambda": 10.0, "adagauss_alpha": 1.0, "adagauss_beta": 1.0,
                 "adagauss_samples": 10000, "adagauss_adapter_lr": 0.01}
ADAGAUSS_NOT_STEP = {"feature_kd": 0.0, "proto_aug": 0.0, "pks": 0.0, "pr": 0.0, "rotation": False,
                     "train_on": "current", "preset": "paper", "mixup_rounds": 0, "contrastive": 0.0, "transfer": 0.0,
                     "efc": False}


def _validate_adagauss_options(p: Params, source: str, key: str, m: MethodConfig) -> None:
    """AdaGauss (docs/efcil.md): adagauss true exactly with classifier bayes; its options only then; its step is
    CE + projected distillation + anti-collapse (no other method's term); the batch must exceed the latent width
    (the anti-collapse loss takes the Cholesky factor of the batch covariance)."""
    if m.classifier == "bayes" and not m.adagauss:
        raise _fail(source, f"{key}.classifier", "the Bayes classifier reads AdaGauss's Gaussians: expected another "
                                                 f"classifier without adagauss, got 'bayes' (or set {key}.adagauss: true)")
    if not m.adagauss:
        _require_values(source, key, m, ADAGAUSS_ONLY, f"only AdaGauss uses it: expected {{off!r}} without adagauss, "
                                                       f"got {{got!r}} (or set {key}.adagauss: true)")
        return
    _require_values(source, key, m, {"classifier": "bayes"}, "AdaGauss classifies with its Gaussians: expected "
                                                             "{off!r}, got {got!r}")
    _choice(source, f"{key}.backbone", m.backbone, ("resnet18", "vit"))
    _positive(source, f"{key}.adagauss_latent", m.adagauss_latent)
    for option in ("adagauss_lambda", "adagauss_alpha"):
        if getattr(m, option) < 0:
            raise _fail(source, f"{key}.{option}", f"expected a weight >= 0, got {getattr(m, option)}")
    for option in ("adagauss_beta", "adagauss_samples", "adagauss_adapter_lr"):
        _positive(source, f"{key}.{option}", getattr(m, option))
    if m.adagauss_samples < 2:
        raise _fail(source, f"{key}.adagauss_samples", f"expected at least 2 (a covariance of the adapted samples), "
                                                       f"got {m.adagauss_samples}")
    if p.train.batch_size <= m.adagauss_latent:
        raise _fail(source, f"{key}.adagauss_latent", f"the anti-collapse loss needs a batch larger than the latent "
                                                      f"space: expected less than train.batch_size "
                                                      f"({p.train.batch_size}), got {m.adagauss_latent}")
    _require_values(source, key, m, ADAGAUSS_NOT_STEP, "AdaGauss's step is cross-entropy + projected distillation + "
                                                       "anti-collapse (adagauss true): expected {off!r}, got {got!r}")


def resolve_precision(requested: str, device_type: str, preset: str) -> str:
    """The arithmetic a step runs in: fp32 on a CPU; on a GPU ``requested``, where auto means the preset's."""
    if device_type != "cuda":
        return "fp32"
    return PRESET_PRECISION[preset] if requested == "auto" else requested


def resolve_static_shapes(requested: str | bool, compile_setting: bool | str) -> bool:
    """Whether the official step runs with static shapes (``runtime.static_shapes``): ``requested`` when it is
    true or false; auto means true exactly under ``runtime.compile: graphs`` (CUDA only, where a new input
    shape is a new CUDA graph), so the CPU default keeps the compacted rows and the committed grid's bytes."""
    if requested == "auto":
        return compile_setting == "graphs"
    if not isinstance(requested, bool):
        raise ConfigError(f"runtime.static_shapes: expected one of auto, true, false, got {requested!r}")
    return requested


def non_default_fields(obj, names=None) -> dict:
    """The fields of a frozen config that differ from their declared defaults (required fields always)."""
    out = {}
    for f in dataclasses.fields(obj):
        if names is not None and f.name not in names:
            continue
        value = getattr(obj, f.name)
        if f.default is dataclasses.MISSING or value != f.default:
            out[f.name] = to_dict(value)
    return out


def to_dict(obj) -> dict:
    """A frozen config (or part of it) as plain, YAML/JSON-ready Python values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj

