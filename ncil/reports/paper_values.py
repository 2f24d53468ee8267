"""The paper's reported numbers (Zhai et al., AAAI-24; method-spec Section 7), as data.

All values are percentages as printed. ``None`` marks a value the paper does not report. Settings are
named ``F+CxT`` (``setting_label``); "N tasks" in the paper means N incremental tasks after the base.
``method`` keys name our methods where one corresponds to a paper row (``conf/method/<name>.yaml``):
PASS is ``pass_resnet18`` (Table 3 quotes Table 1's PASS Last as "PASS (ResNet-18)"); the Table 3 and
Table 5 rows are the ablation methods. Other rows (LwF-MC included: our ``lwf`` is feature KD only) are
quoted for context and have no "ours" value.

Table 4 (DyTox and DyTox + the paper's PKS, CIFAR-100 B0 with 20 exemplars per class) names the methods
``dytox`` and ``dytox_pks`` (conf/method/, docs/dytox.md). The paper's text says its "Ours" row replaces
DyTox's distillation with PKS ("The vanilla knowledge distillation is replaced with our patch-level knowledge
selection"), so the row reads "(PKS)", not "(PKS, PR)". No CIFAR-100 DyTox grid has run yet, so its "ours"
column reads "not run". ``FCS_PUBLISHED`` holds the accuracy curves
the FCS code base (Li et al., CVPR 2024), which the released code forks, publishes for itself: the
published numbers of our ``fcs`` configuration (the released code with PKS and PR switched off).
"""

from __future__ import annotations

import re

# Paper data sets: our data set name -> (display name, the paper's settings in column order).
DATASETS = {
    "cifar100": ("CIFAR-100", ("50+10x5", "50+5x10", "40+3x20")),
    "tinyimagenet": ("TinyImageNet", ("100+20x5", "100+10x10", "100+5x20")),
    "imagenet_subset": ("ImageNet-Subset", ("50+5x10",)),
}
# Other spellings a data set config may use for the same data (compared after lower-casing and
# dropping everything but letters and digits).
_ALIASES = {"cifar100": "cifar100", "tinyimagenet": "tinyimagenet", "tinyimagenet200": "tinyimagenet",
            "imagenetsubset": "imagenet_subset", "imagenet100": "imagenet_subset", "imagenetsub": "imagenet_subset"}


def canonical_dataset(name: str) -> str:
    """Our name of a paper data set (``cifar100`` / ``tinyimagenet`` / ``imagenet_subset``), else ``name``."""
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()), name)


# Table 1: (Avg, Last) per data set and setting. Row label -> (our method or None, values).
_T1_COLUMNS = [("cifar100", "50+10x5"), ("cifar100", "50+5x10"), ("cifar100", "40+3x20"),
               ("tinyimagenet", "100+20x5"), ("tinyimagenet", "100+10x10"), ("tinyimagenet", "100+5x20"),
               ("imagenet_subset", "50+5x10")]
_T1_ROWS = [
    ("iCaRL-CNN (E=20)", None, [51.07, 40.12, 48.66, 39.65, 44.43, 35.47, 34.64, 22.31, 31.15, 21.10, 27.90, 20.46, 50.53, 41.08]),
    ("iCaRL-NCM (E=20)", None, [58.56, 49.74, 54.19, 45.13, 50.51, 40.68, 45.86, 33.45, 43.29, 33.75, 38.04, 28.89, 60.79, 51.90]),
    ("LUCIR (E=20)", None, [63.78, 55.06, 62.39, 50.14, 59.07, 48.78, 49.15, 37.09, 48.52, 36.80, 42.83, 32.55, 66.16, 56.21]),
    ("EEIL (E=20)", None, [60.37, 52.35, 56.05, 47.67, 52.34, 41.59, 47.12, 34.24, 45.01, 34.26, 40.50, 30.14, 63.34, 54.19]),
    ("RRR (E=20)", None, [66.43, 57.22, 65.78, 55.74, 62.43, 51.35, 51.20, 42.23, 49.54, 40.12, 47.46, 35.54, 67.05, 58.22]),
    # 50.47 (C10 Last) is above its Avg: a typo in the paper (method-spec 7.1), quoted as printed.
    ("LwF-MC", None, [45.93, 36.17, 27.43, 50.47, 20.07, 15.88, 29.12, 17.12, 23.10, 12.33, 17.43, 8.75, 31.18, 20.01]),
    ("EWC", None, [16.04, 9.32, 14.70, 8.47, 14.12, 8.23, 18.80, 12.71, 15.77, 10.12, 12.39, 8.42, None, None]),
    ("MUC", None, [49.42, 38.45, 30.19, 19.57, 21.27, 15.65, 32.58, 17.98, 26.61, 14.54, 21.95, 12.70, 35.07, 22.65]),
    ("IL2A", None, [63.22, 55.13, 57.65, 45.32, 54.90, 45.24, 48.17, 36.14, 42.10, 35.23, 36.79, 28.74, None, None]),
    ("PASS", "pass_resnet18", [63.47, 55.67, 61.84, 49.03, 58.09, 48.48, 49.55, 41.58, 47.29, 39.28, 42.07, 32.78, 61.80, 50.44]),
    ("SSRE", None, [65.88, 56.33, 65.04, 55.01, 61.70, 50.47, 50.39, 41.67, 48.93, 39.89, 48.17, 39.76, 67.69, 57.51]),
    ("Ours", "ours", [68.17, 59.02, 70.13, 57.90, 66.86, 54.25, 54.88, 44.97, 52.72, 43.35, 51.68, 41.94, 70.18, 61.42]),
]


def _table1() -> list[dict]:
    rows = []
    for label, method, values in _T1_ROWS:
        for j, (dataset, setting) in enumerate(_T1_COLUMNS):
            rows.append({"table": "table1", "row": label, "method": method, "dataset": dataset, "setting": setting,
                         "avg_accuracy": values[2 * j], "last_accuracy": values[2 * j + 1]})
    return rows


# Table 2: average forgetting F_T (TinyImageNet 5/10/20 tasks, ImageNet-Subset 10 tasks).
_T2_COLUMNS = [("tinyimagenet", "100+20x5"), ("tinyimagenet", "100+10x10"), ("tinyimagenet", "100+5x20"),
               ("imagenet_subset", "50+5x10")]
_T2_ROWS = [
    ("LwF-MC", None, [54.26, 54.37, 63.54, 56.07]),
    ("EWC", None, [67.55, 70.23, 75.54, 71.97]),
    ("MUC", None, [51.46, 50.21, 58.00, 53.85]),
    ("IL2A", None, [25.43, 28.32, 35.46, 32.43]),
    ("PASS", "pass_resnet18", [18.04, 23.11, 30.55, 26.73]),
    ("SSRE", None, [9.17, 14.06, 14.20, 23.22]),
    ("Ours", "ours", [11.45, 12.21, 12.82, 18.39]),
]

# Table 3 (ablation) and Table 5 (choice of W_i): CIFAR-100 Last accuracy, 5 / 10 / 20 tasks.
_CIFAR = ("50+10x5", "50+5x10", "40+3x20")
_T3_ROWS = [
    ("PASS (ResNet-18)", "pass_resnet18", [55.67, 49.03, 48.48]),
    ("Baseline (ViT)", "baseline", [56.44, 51.90, 51.20]),
    ("+ PKS", "pks", [58.27, 56.82, 52.87]),
    ("+ PR", "pr", [57.78, 54.61, 51.51]),
    ("Full", "ours", [59.02, 57.90, 54.25]),
]
_T5_ROWS = [
    ("W_i = 1 (uniform patch KD)", "ours_w_uniform", [56.18, 51.99, 50.53]),
    ("W_i = L2 distance (far patches weighted more)", "ours_w_direct", [53.81, 49.78, 48.31]),
    ("Eq. 2 (inverse distance, ours)", "ours", [59.02, 57.90, 54.25]),
]


def _per_column(table: str, rows, columns, key: str) -> list[dict]:
    return [{"table": table, "row": label, "method": method, "dataset": dataset, "setting": setting, key: v}
            for label, method, values in rows for (dataset, setting), v in zip(columns, values)]


# Table 4 (paper p. 6976; method-spec 7.4): DyTox on CIFAR-100 B0 (DyTox's class order, 20 exemplars per
# class, 2000 in all), N = 10 tasks of 10 classes and N = 20 tasks of 5: "10+10x9" and "5+5x19" in our
# F+CxT names. Each row: (label, our method name, [N=10 Avg, Last, F, N=20 Avg, Last, F]).
TABLE4_SOURCE = ("Zhai et al., AAAI-24, Table 4 \"Results applied to Dytox on CIFAR-100\" (p. 6976); "
                 "method-spec 7.4")
TABLE4_SETTING = "CIFAR-100 B0, DyTox's class order, 20 exemplars per class (rehearsal; not NECIL)"
_T4_SETTINGS = ("10+10x9", "5+5x19")  # N=10, N=20
_T4_ROWS = [
    ("DyTox", "dytox", [75.47, 62.10, 15.43, 75.10, 59.41, 21.60]),
    ("DyTox + ours (PKS)", "dytox_pks", [78.35, 66.47, 13.12, 77.63, 63.90, 15.76]),
]
_T4_METRICS = ("avg_accuracy", "last_accuracy", "avg_forgetting")


def _table4() -> list[dict]:
    rows = []
    for label, method, values in _T4_ROWS:
        for j, setting in enumerate(_T4_SETTINGS):
            rows.append({"table": "table4", "row": label, "method": method, "dataset": "cifar100", "setting": setting,
                         **{key: values[3 * j + k] for k, key in enumerate(_T4_METRICS)}})
    return rows


def reported() -> list[dict]:
    """Every reported number as one record: table, row label, our method (or None), data set, setting,
    and the metric key (``avg_accuracy`` / ``last_accuracy`` / ``avg_forgetting``) with its value."""
    return (_table1()
            + _per_column("table2", _T2_ROWS, _T2_COLUMNS, "avg_forgetting")
            + _per_column("table3", _T3_ROWS, [("cifar100", s) for s in _CIFAR], "last_accuracy")
            + _per_column("table5", _T5_ROWS, [("cifar100", s) for s in _CIFAR], "last_accuracy")
            + _table4())


# Which rows each of our tables shows (for data sets the paper did not use, only rows with a method).
TABLE_ROWS = {
    "table1": [(label, method) for label, method, _ in _T1_ROWS],
    "table2": [(label, method) for label, method, _ in _T2_ROWS],
    "table3": [(label, method) for label, method, _ in _T3_ROWS],
    "table5": [(label, method) for label, method, _ in _T5_ROWS],
    "table4": [(label, method) for label, method, _ in _T4_ROWS],
}
# Our baselines without a paper row: shown in our own data sets' Table 1 / Table 2 for context. (Our
# `lwf` is feature distillation only, not the paper's LwF-MC, so it is not compared with that row.)
EXTRA_METHODS = [("Fine-tuning (lower bound)", "finetune"), ("Joint training (upper bound)", "joint"),
                 ("LwF-style feature KD", "lwf")]
# The released code's preset (issue 12): rows of Tables 1-3 on every data set, after the paper's rows,
# with no paper value (the paper reports its method, not its code's preset; FCS's own published curves
# are ``FCS_PUBLISHED``, another backbone). "not run" where a grid does not run them (only CIFAR-100's does).
OFFICIAL_ROWS = [("FCS as released (`official` preset)", "fcs"), ("Ours as released (`official` preset)", "ours_official")]
OFFICIAL_ROW_TABLES = ("table1", "table2", "table3")


# --- FCS's published numbers (issue 12, item 2) ---------------------------------------------------
# The FCS paper's own tables (Li, Peng, Zhou, "FCS: Feature Calibration and Separation for Non-Exemplar
# Class Incremental Learning", CVPR 2024, pp. 28495-28504) are not in the material this project holds
# (/work/shared has this paper and the method-spec only, neither quotes FCS's numbers), and the searched
# public pages gave the abstract only. What FCS publishes in its code repository is recorded instead:
FCS_SOURCE = ("github.com/zhoujiahuan1991/CVPR2024-FCS, files/results.txt (commit "
              "06acf6479d1e156f5a5b13b83bc1b3530d162a46; the README: \"Results for different experiments are "
              "provided in ./files/results.txt\")")
# The file's seven curves as printed: top-1 accuracy (%) on all classes seen after each stage, base stage
# first (Acc_1 .. Acc_{T+1}); "CIFAR100-5stages" is 50 base classes + 5 stages of 10 (PASS's protocol,
# which the FCS configs follow: exps/fcs/cifar100/20/second_stage.json has init_cls 40, increment 3;
# exps/fcs/tinyimagenet/20/: 100, 5; exps/fcs/imagenet/: 50, 5). Those configs train FCS's ResNet-18 with
# CBAM (convnet_type resnet18_cbam), no exemplars, one seed (1993): not the ViT of our `fcs`
# configuration, so these are FCS's published numbers, not a target for that run. Keys: (our data set,
# our setting label).
FCS_PUBLISHED = {
    ("cifar100", "50+10x5"): [83.92, 74.85, 70.77, 67.04, 63.66, 62.13],
    ("cifar100", "50+5x10"): [83.92, 77.33, 73.67, 71.4, 69.66, 67.72, 66.22, 64.53, 62.66, 61.91, 60.39],
    ("cifar100", "40+3x20"): [84.58, 78.42, 77.89, 76.49, 75.25, 73.07, 72.16, 70.43, 68.19, 68.04, 67.57, 66.6,
                              66.21, 64.66, 63.24, 62.64, 61.62, 60.89, 59.93, 59.24, 58.36],
    ("tinyimagenet", "100+20x5"): [65.6, 55.95, 54.56, 51.4, 48.43, 46.04],
    ("tinyimagenet", "100+10x10"): [65.6, 57.89, 55.27, 54.49, 52.74, 51.92, 50.26, 49.01, 47.77, 46.86, 44.95],
    ("tinyimagenet", "100+5x20"): [64.88, 58.88, 58.07, 55.34, 54.67, 55.26, 53.68, 53.05, 52.34, 51.89, 50.25,
                                   49.92, 48.8, 48.96, 47.82, 47.21, 46.1, 46.01, 44.76, 43.74, 42.57],
    ("imagenet_subset", "50+5x10"): [84.48, 79.13, 75.4, 73.05, 71.63, 69.87, 68.35, 66.07, 64.56, 63.07, 61.76],
}
# The file's labels, for each key above (as printed there).
FCS_LABELS = {
    ("cifar100", "50+10x5"): "CIFAR100-5stages", ("cifar100", "50+5x10"): "CIFAR100-10stages",
    ("cifar100", "40+3x20"): "CIFAR100-20stages", ("tinyimagenet", "100+20x5"): "Tiny-ImageNet-5stages",
    ("tinyimagenet", "100+10x10"): "Tiny-ImageNet-10stages", ("tinyimagenet", "100+5x20"): "Tiny-ImageNet-20stages",
    ("imagenet_subset", "50+5x10"): "ImageNet-Subset-10stages",
}


def fcs_published() -> list[dict]:
    """FCS's published result per (data set, setting): its curve, Last (the curve's final point, as
    printed) and Avg = the mean of the curve (our computation, the paper's Avg definition applied to it;
    FCS does not print an Avg in this file). Source: ``FCS_SOURCE``."""
    out = []
    for (dataset, setting), curve in FCS_PUBLISHED.items():
        out.append({"method": "fcs", "dataset": dataset, "setting": setting, "label": FCS_LABELS[(dataset, setting)],
                    "curve": list(curve), "last_accuracy": curve[-1], "avg_accuracy": sum(curve) / len(curve),
                    "source": FCS_SOURCE})
    return out


# --- The exemplar-free (EFCIL) benchmark table (issue 25, docs/efcil.md) --------------------------
# Settings the exemplar-free papers report, per data set: our scenario id (conf/scenario/<id>.yaml) -> (label
# F+CxT, warm or cold start). Warm start: a large base task (FeCAM's protocol); cold start: equal tasks from the
# first (EFC's, LDC's and AdaGauss's protocol: "10 and 20 equal tasks", AdaGauss Sec. 4).
_HUNDRED_CLASS_SETTINGS = {  # CIFAR-100 and ImageNet-Subset: the same splits of 100 classes
    "base50_inc10": ("50+10x5", "warm start"),
    "base50_inc5": ("50+5x10", "warm start"),
    "base40_inc3": ("40+3x20", "warm start"),
    "base10_inc10": ("10+10x9", "cold start"),
    "base5_inc5": ("5+5x19", "cold start"),
}
EFCIL_SETTINGS = {
    "cifar100": _HUNDRED_CLASS_SETTINGS,
    "tinyimagenet": {
        "base100_inc20": ("100+20x5", "warm start"),
        "base100_inc10": ("100+10x10", "warm start"),
        "base100_inc5": ("100+5x20", "warm start"),
        "base20_inc20": ("20+20x9", "cold start"),
        "base10_inc10": ("10+10x19", "cold start"),
    },
    "imagenet_subset": _HUNDRED_CLASS_SETTINGS,
}
# Rows: (label, our method key), every one a pipeline method (conf/method/*.yaml; docs/efcil.md).
EFCIL_ROWS = [
    ("FeCAM", "fecam"),
    ("SDC", "sdc"),
    ("ADC", "adc"),
    ("LDC", "ldc"),
    ("EFC", "efc"),
    ("EFC++", "efc_pp"),
    ("AdaGauss", "adagauss"),
]
# Convention of a quoted value: how its paper averages accuracy over the seen classes (docs/metrics.md).
# "not checked": the paper's text could not be read here (docs/efcil.md, "What is not established"), so the
# value is shown beside both of ours. On equal tasks over a test set with as many images per class (every
# cold-start setting here), both conventions give the same number.
SAMPLE_WEIGHTED, TASK_AVERAGED, CONVENTION_NOT_CHECKED = "sample-weighted", "task-averaged", "not checked"
_ADAGAUSS_T1 = ("Rypesc et al., AdaGauss, NeurIPS 2024, Table 1 (ResNet-18 from scratch, mean of 5 runs; A_inc, A_last)"
                "; its released code logs the task-averaged and the class-weighted mean, equal on these equal tasks")
_EFC_VIA_ADAGAUSS = ("Magistri et al., EFC, ICLR 2024, Table 1 (cold start), as AdaGauss (NeurIPS 2024) Table 1 "
                     "quotes it, rounded to 0.1 (EFC's own table not read here); EFC's released logger weights each "
                     "task's accuracy by its classes")
# Every quoted value: (method, data set, scenario id) -> (Avg, Last, convention, source). Only numbers with a source
# that was read (docs/efcil.md, "The benchmark table").
_EFCIL_REPORTED = {
    ("fecam", "cifar100", "base50_inc10"): (70.9, 62.1, CONVENTION_NOT_CHECKED,
                                            "Goswami et al., FeCAM, NeurIPS 2023, CIFAR-100 50+10x5 (ResNet-18), as "
                                            "quoted by issue 25 (the paper's table not checked here: docs/efcil.md)"),
    ("adagauss", "cifar100", "base10_inc10"): (60.2, 46.1, SAMPLE_WEIGHTED, _ADAGAUSS_T1),
    ("adagauss", "cifar100", "base5_inc5"): (52.4, 37.8, SAMPLE_WEIGHTED, _ADAGAUSS_T1),
    ("adagauss", "tinyimagenet", "base20_inc20"): (50.6, 36.5, SAMPLE_WEIGHTED, _ADAGAUSS_T1),
    ("adagauss", "tinyimagenet", "base10_inc10"): (45.1, 31.3, SAMPLE_WEIGHTED, _ADAGAUSS_T1),
    ("adagauss", "imagenet_subset", "base10_inc10"): (65.0, 51.1, SAMPLE_WEIGHTED, _ADAGAUSS_T1),
    ("adagauss", "imagenet_subset", "base5_inc5"): (57.4, 42.6, SAMPLE_WEIGHTED, _ADAGAUSS_T1),
    ("efc", "cifar100", "base10_inc10"): (58.6, 43.6, SAMPLE_WEIGHTED, _EFC_VIA_ADAGAUSS),
    ("efc", "cifar100", "base5_inc5"): (47.3, 32.2, SAMPLE_WEIGHTED, _EFC_VIA_ADAGAUSS),
    ("efc", "tinyimagenet", "base20_inc20"): (48.0, 34.1, SAMPLE_WEIGHTED, _EFC_VIA_ADAGAUSS),
    ("efc", "tinyimagenet", "base10_inc10"): (42.1, 28.7, SAMPLE_WEIGHTED, _EFC_VIA_ADAGAUSS),
    ("efc", "imagenet_subset", "base10_inc10"): (59.9, 47.4, SAMPLE_WEIGHTED, _EFC_VIA_ADAGAUSS),
    ("efc", "imagenet_subset", "base5_inc5"): (49.9, 35.8, SAMPLE_WEIGHTED, _EFC_VIA_ADAGAUSS),
}


def efcil_reported() -> list[dict]:
    """Every quoted EFCIL benchmark value as one record: table ``efcil_benchmark``, row label, our method, data
    set, setting (scenario id) and its label, ``avg_accuracy`` / ``last_accuracy``, the paper's accuracy
    convention and the source (paper, table)."""
    label_of = {method: label for label, method in EFCIL_ROWS}
    rows = []
    for (method, dataset, setting), (avg, last, convention, source) in _EFCIL_REPORTED.items():
        rows.append({"table": "efcil_benchmark", "row": label_of[method], "method": method, "dataset": dataset,
                     "setting": setting, "label": EFCIL_SETTINGS[dataset][setting][0], "avg_accuracy": avg,
                     "last_accuracy": last, "convention": convention, "source": source})
    return rows
