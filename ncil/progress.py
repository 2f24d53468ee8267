"""Progress of a job: a bar on a terminal, and plain lines in the job's log file."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path


def get_logger(log_path: str | None, name: str = "ncil") -> logging.Logger:
    """A logger that writes timestamped lines to ``log_path`` (truncated) and to stderr."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    if not sys.stderr.isatty():  # on a terminal the bar shows progress; elsewhere stderr gets the lines
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    return logger


class EpochProgress:
    """Per-epoch bar (tqdm, terminal only) plus one log line per epoch: epoch, loss, images/s."""

    def __init__(self, logger: logging.Logger, label: str, epochs: int, steps_per_epoch: int):
        self.logger, self.label, self.epochs, self.steps = logger, label, epochs, steps_per_epoch
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=epochs * steps_per_epoch, desc=label, unit="step", file=sys.stderr, leave=False)

    def start_epoch(self) -> None:
        self.t0, self.seen, self.loss_sum, self.correct = time.perf_counter(), 0, 0.0, 0

    def step(self, loss: float, batch: int, correct: int) -> None:
        self.seen += batch
        self.loss_sum += loss * batch
        self.correct += correct
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")
            self.bar.update(1)

    def end_epoch(self, epoch: int, lr: float) -> dict:
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        stats = {
            "epoch": epoch + 1,
            "loss": self.loss_sum / max(self.seen, 1),
            "train_acc": 100.0 * self.correct / max(self.seen, 1),
            "images_per_s": self.seen / seconds,
            "lr": lr,
        }
        self.logger.info(
            "%s epoch %d/%d loss %.4f train-acc %.2f%% %.0f images/s lr %.2e",
            self.label, stats["epoch"], self.epochs, stats["loss"], stats["train_acc"], stats["images_per_s"], lr,
        )
        return stats

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
