"""ncil: a reproducible pipeline for non-exemplar class-incremental learning.

Implements Zhai, Liu, Yu, Cheng, "Fine-Grained Knowledge Selection and Restoration for
Non-exemplar Class Incremental Learning" (AAAI-24) as a library plus a Snakemake/DVC workflow.
"""

__version__ = "0.1.0"
